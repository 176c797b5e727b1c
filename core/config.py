"""Service configuration: the one place that reads the environment (prefix INTERNVL_JOBS_)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "INTERNVL_JOBS_"
_ALIAS_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|B)?$"

Environment = Literal["development", "test", "production"]
DType = Literal["auto", "bfloat16", "float16", "float32"]
Attention = Literal["auto", "sdpa", "flash_attention_2", "eager"]
Quantization = Literal["none", "8bit", "4bit"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ModelSpec(BaseModel):
    """One entry of the model registry: an alias clients name, and how workers load it."""

    model_config = {"extra": "forbid", "frozen": True}

    alias: str = Field(description="Name clients give in jobs (lowercase, digits, . _ -).")
    checkpoint: str = Field(description="Hugging Face hub id or local checkpoint directory.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    default: bool = Field(False, description="Used when a job names no model.")
    queue: str = Field("", description="Celery queue; defaults to 'internvl.<alias>'.")
    tile_size: int = Field(448, ge=16, le=2048, description="Pixel size of one image tile.")
    max_tiles: int = Field(12, ge=1, le=40, description="Largest tile grid a job may ask for.")
    dtype: DType = Field(
        "auto", description="auto: bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU."
    )
    attn_implementation: Attention = Field(
        "auto", description="auto: flash_attention_2 when installed, else sdpa."
    )
    quantization: Quantization = Field(
        "none", description="8bit/4bit weights with bitsandbytes (vision tower kept full)."
    )
    compile: bool = Field(False, description="torch.compile the model's forward.")
    gpus_per_worker: int = Field(
        1, ge=1, le=64, description="GPUs one worker process spreads the model over (device_map)."
    )
    max_memory_per_gpu: str | None = Field(
        None,
        pattern=_MEMORY_PATTERN,
        description="Weights placed on each GPU at most, e.g. '70GiB'; default: what is free.",
    )
    cpu_offload_memory: str | None = Field(
        None,
        pattern=_MEMORY_PATTERN,
        description="RAM for weights that do not fit the GPUs, e.g. '64GiB' ('0': none).",
    )
    offload_folder: str | None = Field(
        None, description="Disk folder for weights that fit nowhere else: the last resort, slow."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Jobs per generate() call.")
    max_batch_wait_ms: int = Field(
        500,
        ge=0,
        le=10_000,
        description="The longest a batch that is not full waits for more jobs, from the "
        "arrival of its oldest job.",
    )
    batch_gap_ms: int = Field(
        50,
        ge=0,
        le=10_000,
        description="A batch that is not full starts early once no job has arrived for this "
        "long and none is still being prepared: a lone job waits this long, a burst fills.",
    )
    max_batch_tiles: int = Field(256, ge=1, description="Tile budget of one batch.")
    scheduler: Literal["continuous", "static"] = Field(
        "continuous",
        description="continuous: jobs join and leave the running batch at every step; static: "
        "one generate() per batch until its longest job ends (beam search always runs static).",
    )
    prefill_tokens_per_step: int = Field(
        1024,
        ge=16,
        le=1_000_000,
        description="Continuous batching: padded prompt tokens one step may prefill while "
        "others decode (longer prompts are prefilled in chunks).",
    )
    kv_cache_memory_fraction: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Continuous batching: share of the device's free memory (after loading) "
        "the running batch's KV cache may take; admission keeps within it.",
    )
    join_waiting_ratio: float = Field(
        0.3,
        ge=0.0,
        le=100.0,
        description="Continuous batching: a running batch takes new jobs once this many per "
        "running row wait (or they fill its free rows); 0 joins every arrival at the next step.",
    )
    join_max_wait_steps: int = Field(
        20,
        ge=0,
        le=100_000,
        description="Continuous batching: decode steps a job may wait to join a running batch "
        "before it joins alone (max_batch_wait_ms bounds the same wait in time).",
    )
    join_order: Literal["shortest", "arrival"] = Field(
        "shortest",
        description="Continuous batching: which waiting jobs join first; shortest: smallest "
        "max_new_tokens first (a job overtaken for join_overtake_max_ms then goes first); "
        "arrival: first come, first served.",
    )
    join_overtake_max_ms: int = Field(
        30_000,
        ge=0,
        le=3_600_000,
        description="Continuous batching, join_order shortest: how long shorter jobs may "
        "overtake a waiting job; after that it joins in order of arrival.",
    )
    kv_budget_recover_steps: int = Field(
        200,
        ge=1,
        le=1_000_000,
        description="Continuous batching: steps without running out of memory after which a "
        "KV budget that out-of-memory lowered grows back by kv_budget_recover_factor.",
    )
    kv_budget_recover_factor: float = Field(
        1.25,
        gt=1.0,
        le=10.0,
        description="Continuous batching: how much a lowered KV budget grows after "
        "kv_budget_recover_steps clean steps, never above the one computed at start.",
    )
    vision_chunk_tiles: int = Field(
        0,
        ge=0,
        le=4096,
        description="Tiles the vision tower encodes at once; 0: 8 on CPU (cache-sized), 64 on GPU.",
    )
    prepare_cache_mb: int = Field(
        256,
        ge=0,
        le=65_536,
        description="MiB of prepared images a worker keeps, so an image asked several "
        "questions is prepared once (a 13-tile image at 448 px is 7.5 MiB as tiles, a "
        "640x480 photo 0.9 MiB as a picture); 0: none.",
    )
    stage_pixels_mb: int = Field(
        0,
        ge=0,
        le=65_536,
        description="On a GPU: MiB of pinned host memory (and as much device memory) for "
        "copying the next group's pixels to the device on a side stream while the current step "
        "runs (continuous batching), or the next batch's while the current batch generates "
        "(static batching, beam search); 0: off (copied when the prefill starts). Not used on "
        "a CPU.",
    )
    image_resize: Literal["auto", "device", "host"] = Field(
        "auto",
        description="Where pictures are resized and cut into tiles. device: the host only "
        "decodes (at the scale the grid needs) and the model's device resizes, cuts and "
        "normalises; host: the host cuts uint8 tiles; auto: device on a GPU, host on a CPU "
        "(where the model's process is the device).",
    )

    @field_validator("alias")
    @classmethod
    def _alias_format(cls, value: str) -> str:
        if not _ALIAS_RE.match(value):
            raise ValueError("alias must be lowercase letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _default_queue(self) -> ModelSpec:
        if not self.queue:
            object.__setattr__(self, "queue", f"internvl.{self.alias}")
        return self


# Attempts at once, then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h.
WEBHOOK_RETRY_DELAYS_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)

DEFAULT_MODELS = [
    ModelSpec(alias="internvl3-1b", checkpoint="OpenGVLab/InternVL3-1B-hf", default=True)
]


class Settings(BaseSettings):
    """Every setting of the service; read from INTERNVL_JOBS_* variables or a .env file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    # Deployment
    environment: Environment = Field(
        "production", description="development relaxes safety checks; never use it exposed."
    )
    data_dir: Path = Field(
        Path(".internvl-jobs"), description="Where embedded defaults keep their files."
    )
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in data_dir.")
    database_pool_size: int = Field(
        0,
        ge=0,
        le=1000,
        description="Connections each process keeps open to PostgreSQL, and as many again "
        "for bursts, opened as needed and kept open (SQLite: ignored); 0: the API 10, a "
        "worker 4 (or database_commit_concurrency + 2 if more), the sweeper 2. A worker's "
        "claims and results use `database_commit_concurrency` of them, its heartbeat one "
        "(docs/scaling.md).",
    )
    database_commit_concurrency: int = Field(
        1,
        ge=1,
        le=32,
        description="Transactions a worker runs at once for its task threads' claims and "
        "results (group commit: the changes made while all are busy commit together in the "
        "next one); SQLite: always 1. 1 groups the most and costs the least CPU; raise it "
        "where the database's round trip limits a worker's jobs/s: measured, 1 records about "
        "225 jobs/s at a 1.3 ms round trip and 60 at 5.8 ms, 2 and 4 about 1.5x and 2-3x that "
        "(`internvl-jobs bench commits`, docs/scaling.md).",
    )
    broker_url: str = Field(
        "",
        description="Celery broker: redis://host:6379/0, or filesystem:///dir (embedded); "
        "default: filesystem broker in data_dir.",
    )
    storage_url: str = Field(
        "", description="s3://bucket/prefix or file:///path; default: directory in data_dir."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, ...); credentials via AWS_* variables."
    )
    s3_region: str | None = Field(None, description="Region of the bucket (AWS S3).")
    s3_direct: bool = Field(
        True,
        description="Object puts, gets and HEADs signed with botocore's signer and sent on a "
        "urllib3 pool of their own (a third of boto3's CPU per call, same retries); false: "
        "every call through boto3.",
    )
    models: list[ModelSpec] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        description="Model registry as JSON: [{alias, checkpoint, default, ...}].",
    )

    # API
    auth_enabled: bool = Field(
        True,
        description="Require API keys; false only in development, on an API bound to loopback.",
    )
    insecure_bind_override: bool = Field(
        False,
        description="Serve on a non-loopback address although auth is off or private / "
        "plain-http targets are allowed (logged as a warning at start).",
    )
    public_base_url: str = Field("", description="Base URL used in links; empty: relative.")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body the API reads."
    )
    max_images_per_job: int = Field(
        16,
        ge=1,
        le=256,
        description="Images one job may carry; each chat reference to an image counts as one.",
    )
    max_messages_per_job: int = Field(64, ge=1, description="Chat messages one job may carry.")
    max_tiles_per_job: int = Field(
        208,
        ge=0,
        description="Most tiles one job may cost (image uses x (tile cap + thumbnail)), checked "
        "at submit; 0: no cap.",
    )
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest encoded image accepted."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1024, description="Largest decoded image (decompression bombs refused)."
    )
    max_video_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest video file accepted (upload or URL)."
    )
    max_video_duration_s: float = Field(
        600.0, gt=0, description="Longest video accepted, in seconds, as its container declares."
    )
    max_video_frame_pixels: int = Field(
        3840 * 2160, ge=1024, description="Largest video frame accepted (width x height)."
    )
    max_video_frames: int = Field(
        36_000, ge=1, description="Most frames a video may hold (declared, or duration x rate)."
    )
    max_video_streams: int = Field(
        4, ge=1, description="Most streams (video, audio, subtitles) a video file may hold."
    )
    max_video_sample_frames: int = Field(
        32, ge=1, le=256, description="Cap of a video job's `num_frames` (frames the model reads)."
    )
    max_new_tokens_cap: int = Field(4096, ge=1, description="Largest max_new_tokens a job may ask.")
    max_text_chars: int = Field(
        32_000, ge=1, description="Longest prompt, question or chat text, in characters."
    )
    max_wait_s: int = Field(60, ge=0, le=600, description="Cap of GET /v1/jobs/{id}?wait=.")
    max_waits_per_tenant: int = Field(
        100, ge=1, description="Long-polls (?wait=) one tenant may hold open at once; over: 429."
    )
    max_jobs_per_batch: int = Field(10_000, ge=1, description="Jobs one batch may hold.")
    max_queued_jobs_per_tenant: int = Field(
        10_000, ge=0, description="Queued jobs one tenant may have; over it: 429. 0: no cap."
    )
    max_queued_jobs: int = Field(
        200_000, ge=0, description="Queued jobs across all tenants; over it: 429. 0: no cap."
    )
    queue_full_retry_after_s: int = Field(
        10, ge=1, description="Retry-After sent with 429 queue_full answers."
    )
    key_rate_per_s: float = Field(
        50.0, ge=0, description="Requests per second one API key may make; 0: unlimited."
    )
    key_rate_burst: int = Field(100, ge=1, description="Requests a key may make at once.")
    image_fetch_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Total time allowed to fetch all image URLs of one submission (resolving, "
        "connecting, headers and body together).",
    )
    image_fetch_max_in_flight: int = Field(
        32, ge=1, le=1024, description="Submissions fetching image URLs at once; over it: 503."
    )
    image_fetch_max_in_flight_per_tenant: int = Field(
        4, ge=1, description="Submissions of one tenant fetching image URLs at once; over it: 429."
    )
    image_fetch_allow_private: bool = Field(
        False,
        description="Allow image URLs on loopback and private networks (development, tests); "
        "refused in production.",
    )
    api_url: str = Field(
        "http://127.0.0.1:8000", description="Service URL used by `internvl-jobs submit`."
    )
    api_key: str = Field("", description="API key used by `internvl-jobs submit`.")

    # Job lifecycle
    max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Claims of a job (first run, lease expiries, releases) before it fails.",
    )
    lease_s: float = Field(
        30.0,
        gt=0,
        description="How long a claim lasts without renewal; a killed worker's job is running "
        "again after about lease_s + sweep_interval_s.",
    )
    sweep_interval_s: float = Field(5.0, gt=0, description="Period of the recovery sweeper.")
    stale_queued_s: float = Field(
        300.0, gt=0, description="A queued job unclaimed this long is published again."
    )
    max_running_jobs_per_tenant: int = Field(
        0,
        ge=0,
        description="Jobs one tenant may have running at once, across workers; a claim over it "
        "leaves the job queued (queue_reason tenant_limit). 0: no limit. A tenant's own limit "
        "(`internvl-jobs keys limit`) overrides it.",
    )
    tenant_limit_hold_s: float = Field(
        2.0,
        gt=0,
        description="How long a job held back by its tenant's running limit waits before it is "
        "published again (the sweeper publishes it; attempts are not used).",
    )
    retry_backoff_s: float = Field(
        2.0,
        ge=0,
        description="Wait before a job given back after an error runs again; doubles per attempt.",
    )
    retry_backoff_max_s: float = Field(300.0, ge=0, description="Cap of retry_backoff_s growth.")
    visibility_timeout_s: int = Field(
        7200, ge=60, description="Redis redelivery of unacknowledged messages; > longest job."
    )
    cancel_poll_s: float = Field(
        1.0, gt=0, description="How often a busy worker looks for cancel requests of its jobs."
    )
    task_events: bool = Field(
        False,
        description="Send every Celery task event from the start: task-sent from the API; "
        "received, started, succeeded from workers. Off (Celery's default) saves about 3 ms of "
        "CPU per job across the API and the worker (docs/benchmarks.md); Flower still turns "
        "the workers' task events on at run time (its enable_events command), and only the "
        "API's task-sent event needs this on. The service itself reads none.",
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, how long running batches may go on before their jobs are "
        "handed back to the queue.",
    )
    idempotency_ttl_s: float = Field(
        86400.0, gt=0, description="How long an Idempotency-Key is remembered."
    )
    job_retention_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="Finished jobs (and their events) are deleted this long after they "
        "finished; 0 keeps them forever.",
    )
    image_retention_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="Images no job has used for this long are deleted, bytes included, once "
        "no live job refers to them; 0 keeps them forever.",
    )
    retention_interval_s: float = Field(
        300.0, gt=0, description="How often the sweeper runs the retention pass."
    )
    orphan_object_grace_s: float = Field(
        3600.0,
        ge=0,
        description="Image bytes in storage that no row refers to (left by a request that "
        "crashed between storing and committing) are deleted once older than this; 0 keeps "
        "them.",
    )

    # Workers
    worker_threads: int = Field(
        0, ge=0, description="Celery threads per worker; 0: twice the model's max_batch_size."
    )
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often a worker renews its leases and reports its state."
    )
    model_stats_ttl_s: float = Field(
        5.0,
        ge=0,
        description="How long an API process reuses each model's queue depth, throughput and "
        "worker counts (GET /v1/models, a queued job's estimate).",
    )
    simulated_device: Literal["", "h100"] = Field(
        "",
        description="Benchmarks only: workers run a simulated accelerator (InternVL3-1B timed "
        "as on this device, the real prepare) instead of loading the model's weights.",
    )
    worker_cpu_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="CPU threads one worker process uses for torch, OpenMP and BLAS; 0: the "
        "launcher divides the host's cores among its worker processes.",
    )
    prepare_processes: int = Field(
        -1,
        ge=-1,
        le=256,
        description="Processes per worker process that decode images, tile and tokenise its "
        "jobs, so the model's process runs the batch loop only; -1: the worker's share of "
        "the host's cores minus one where that share is 4 cores or more, else 0; 0: none, jobs "
        "prepare in the worker's task threads.",
    )
    model_process: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Whether a worker runs its model (engine, batcher, prepare cache) in a "
        "process of its own, so that process runs the batch loop only while the worker's "
        "process claims, prepares and records; auto: on when the worker has prepare processes "
        "(hosts with 4 cores or more per worker, or prepare_processes set).",
    )
    prepare_slot_mb: int = Field(
        8,
        ge=0,
        le=1024,
        description="Size of each recycled shared-memory slot through which prepare processes "
        "hand pixels to the model's process (one slot per task thread, lent one per image or "
        "per frame a video job may read; an image that does not fit, or finds no slot free, "
        "travels as a shared tensor, dearer); 0: no slots.",
    )

    # Webhooks
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook targets on loopback and private networks (development, "
        "tests); refused in production.",
    )
    webhook_allow_http: bool = Field(
        False,
        description="Allow plain-http webhook URLs (development, tests); refused in production.",
    )
    webhook_retry_delays_s: list[float] = Field(
        default_factory=lambda: list(WEBHOOK_RETRY_DELAYS_S),
        description="Delays between delivery attempts (JSON list); the first attempt is "
        "immediate, so a delivery has len+1 attempts.",
    )
    webhook_timeout_s: float = Field(
        15.0,
        gt=0,
        description="A whole delivery attempt (connect, headers, body) ends within this many "
        "seconds; a receiver must have answered 2xx in full by then.",
    )
    webhook_max_in_flight_per_tenant: int = Field(
        4, ge=1, description="Sends one tenant may have in flight per webhook worker."
    )
    webhook_send_lease_s: float = Field(
        60.0, gt=0, description="A delivery being sent is retried if not recorded in this time."
    )
    webhook_poll_interval_s: float = Field(
        1.0, gt=0, description="How often the webhook worker looks for due deliveries."
    )
    webhook_max_retry_after_s: float = Field(
        86400.0, ge=0, description="Cap on a receiver's Retry-After."
    )
    webhook_response_max_bytes: int = Field(
        4096, ge=0, description="How much of a receiver's answer is read and kept."
    )
    webhook_secret_overlap_s: int = Field(
        86400, ge=0, description="How long a rotated-out secret keeps signing beside the new one."
    )
    webhook_concurrency: int = Field(16, ge=1, le=512, description="Sends in flight per worker.")

    # Observability
    log_level: LogLevel = Field("INFO", description="Lowest level logged by every process.")
    log_json: bool = Field(True, description="One JSON object per log line; false: plain text.")
    probe_host: str = Field(
        "0.0.0.0",  # noqa: S104 - Prometheus and the orchestrator scrape from other hosts
        description="Address the probe and metrics servers of workers, sweeper and webhooks bind.",
    )
    worker_probe_port: int = Field(
        9310,
        ge=0,
        le=65535,
        description="Base port of GPU worker probes and metrics: a worker process listens on "
        "base + its (first) device index + 100 x its model's position in the registry; "
        "0 disables.",
    )
    sweeper_probe_port: int = Field(
        9300, ge=0, le=65535, description="Port of the sweeper's probes and metrics; 0 disables."
    )
    webhook_probe_port: int = Field(
        9301,
        ge=0,
        le=65535,
        description="Port of the webhook sender's probes and metrics; 0 disables.",
    )
    generation_stuck_s: float = Field(
        900.0,
        gt=0,
        description="A generate() call running longer than this fails the worker's liveness "
        "probe (the stuck-generation watchdog).",
    )
    exit_when_stuck: bool = Field(
        True,
        description="A worker whose generation is stuck exits, so that its supervisor or "
        "orchestrator restarts it and the sweeper requeues its jobs.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _one_default(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        if not models:
            raise ValueError("the model registry is empty")
        aliases = [m.alias for m in models]
        if len(set(aliases)) != len(aliases):
            raise ValueError("model aliases must be unique")
        defaults = [m for m in models if m.default]
        if len(defaults) > 1:
            raise ValueError("only one model can be the default")
        if not defaults:
            models = [models[0].model_copy(update={"default": True}), *models[1:]]
        return models

    @field_validator("webhook_retry_delays_s")
    @classmethod
    def _delays_not_negative(cls, delays: list[float]) -> list[float]:
        if any(delay < 0 for delay in delays):
            raise ValueError("webhook retry delays must not be negative")
        return delays

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        data = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'jobs.db'}"
        if not self.broker_url:
            self.broker_url = f"filesystem://{data / 'broker'}"
        if not self.storage_url:
            self.storage_url = f"file://{data / 'objects'}"
        if self.environment == "production" and not self.auth_enabled:
            raise ValueError("auth_enabled=false is refused in production; use development")
        if self.environment == "production" and (
            self.webhook_allow_private or self.webhook_allow_http
        ):
            raise ValueError("private or plain-http webhook targets are refused in production")
        if self.environment == "production" and self.image_fetch_allow_private:
            raise ValueError("image URLs on private networks are refused in production")
        if self.webhook_send_lease_s <= self.webhook_timeout_s:
            raise ValueError("webhook_send_lease_s must be longer than webhook_timeout_s")
        return self

    @property
    def default_model(self) -> ModelSpec:
        """The registry entry used when a job names no model."""
        return next(m for m in self.models if m.default)

    def model(self, alias: str) -> ModelSpec | None:
        """The registry entry with this alias, if any."""
        return next((m for m in self.models if m.alias == alias), None)

    def task_threads(self, spec: ModelSpec) -> int:
        """A worker's Celery task threads for a model: worker_threads, else twice its batch."""
        return self.worker_threads or 2 * spec.max_batch_size

    def pool_size(self, automatic: int) -> int:
        """A process's database pool: database_pool_size, else the process's own default."""
        return self.database_pool_size or automatic

    def as_env(self) -> dict[str, str]:
        """These settings as INTERNVL_JOBS_* variables, for child processes."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                env[ENV_PREFIX + name.upper()] = _env_value(value)
        return env


def _env_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process from the environment."""
    return Settings()
