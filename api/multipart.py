"""Multipart bodies parsed on worker threads: the event loop only receives the bytes.

Starlette's form parser runs python-multipart on the event loop, chunk by chunk: a large or
hostile upload (many parts, a part split into tiny pieces, headers to scan) then holds every
other request of the process, `/healthz` included. Here the bytes are gathered on the loop
and each batch of them is parsed, and written into the parts' spooled files, on a worker
thread. The limits are Starlette's (files, fields, size of a field); a malformed body is a 400.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import python_multipart
from fastapi.concurrency import run_in_threadpool
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from core.errors import BadRequest, InvalidRequest

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# Bytes gathered on the loop before one hop to a worker thread parses them.
FEED_BYTES = 256 * 1024


def is_multipart(request: Request) -> bool:
    """Whether the request's body is multipart/form-data."""
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


class ThreadedMultiPartParser(MultiPartParser):
    """Starlette's parser with its work (parsing and file writes) moved to worker threads."""

    async def parse(self) -> FormData:
        """The form, parsed off the event loop; files rewound, ready to read."""
        pending = bytearray()
        try:
            parser = await run_in_threadpool(self._start)
            async for chunk in self.stream:
                pending.extend(chunk)
                if len(pending) >= FEED_BYTES:
                    await run_in_threadpool(self._feed, parser, bytes(pending))
                    pending.clear()
            await run_in_threadpool(self._finish, parser, bytes(pending))
        except BaseException as exc:
            for file in self._files_to_close_on_error:
                file.close()
            if isinstance(exc, MultiPartException):
                raise BadRequest(f"invalid multipart body: {exc.message}") from exc
            if isinstance(exc, FormParserError):
                raise BadRequest("invalid multipart body") from exc
            raise
        return FormData(self.items)

    def _start(self) -> python_multipart.MultipartParser:
        _, params = parse_options_header(self.headers["Content-Type"])
        charset = params.get(b"charset", "utf-8")
        self._charset = _charset_name(charset)
        boundary = params.get(b"boundary")
        if not boundary:
            raise MultiPartException("Missing boundary in multipart.")
        callbacks: MultipartCallbacks = {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }
        return python_multipart.MultipartParser(boundary, callbacks)

    def _feed(self, parser: python_multipart.MultipartParser, data: bytes) -> None:
        parser.write(data)
        for part, piece in self._file_parts_to_write:
            assert part.file is not None
            part.file.file.write(piece)
            part.file.size = (part.file.size or 0) + len(piece)
        for part in self._file_parts_to_finish:
            assert part.file is not None
            part.file.file.seek(0)
        self._file_parts_to_write.clear()
        self._file_parts_to_finish.clear()

    def _finish(self, parser: python_multipart.MultipartParser, data: bytes) -> None:
        if data:
            self._feed(parser, data)
        parser.finalize()


def _charset_name(charset: str | bytes) -> str:
    name = charset.decode("latin-1") if isinstance(charset, bytes) else charset
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "latin-1"


@asynccontextmanager
async def read_form(
    request: Request,
    *,
    files: frozenset[str],
    texts: frozenset[str],
    max_files: int,
    max_fields: int,
) -> AsyncIterator[FormData]:
    """The request's multipart form, parsed on worker threads; its files closed on exit.

    Only the named parts are accepted: `files` as files, `texts` as plain fields (422 else).
    """
    parser = ThreadedMultiPartParser(
        request.headers, request.stream(), max_files=max_files, max_fields=max_fields
    )
    form = await parser.parse()
    try:
        check_parts(form, files=files, texts=texts)
        yield form
    finally:
        await form.close()


def check_parts(form: FormData, *, files: frozenset[str], texts: frozenset[str]) -> None:
    """422 for a part the route does not take, or a file where text belongs (or the reverse)."""
    for name, value in form.multi_items():
        if name not in files | texts:
            expected = ", ".join(f"'{n}'" for n in sorted(files | texts))
            raise InvalidRequest(
                f"unknown multipart field {name[:64]!r}; this route takes {expected}",
                code="invalid_params",
            )
        if (name in files) != isinstance(value, UploadFile):
            kind = "a file" if name in files else "a plain field (no filename)"
            raise InvalidRequest(f"multipart field '{name}' must be {kind}", code="invalid_params")
