#!/bin/sh
# Debian's redis-server refuses clients from other containers without a password (protected
# mode); the redis image is built with protected mode off. Same behaviour, compose's command.
exec /usr/bin/redis-server "$@" --protected-mode no
