"""Language-model serving benchmark (issue 13): `capstan serve` against a plain transformers ``generate`` loop and,
where installed, vLLM's own server, each a server process on a loopback port, with streaming completions.

Servers, all given the same ``save_pretrained`` folder:

  capstan      capstan serve DIR (transformers backend, continuous batching, --max-num-seqs 32)   /v1/completions
  capstan-vllm capstan serve DIR --backend vllm (only where vLLM is installed)
  peer         bench/peers/hf_generate_loop.py: FastAPI, one request at a time, model.generate with a per-token
               streamer (what a user writes first)
  vllm         python -m vllm.entrypoints.openai.api_server (only where vLLM is installed)

Models: ``tiny`` (the tests' seeded 2-layer, 64-wide GPT-2, where per-step Python overhead dominates), ``small`` (a
6-layer, 256-wide GPT-2 with the same tokenizer built here, randomly initialised: batching matters as on a real
model), or ``--model DIR`` for any local folder (a real model on a GPU machine).

Each request is a streamed ``/v1/completions`` of exactly ``--tokens`` tokens (greedy, ``min_tokens`` =
``max_tokens``), sent at concurrency 1, 8 and 32 (each client sends its requests back to back on its own keep-alive
connection; ``--client raw``, a light asyncio HTTP/1.1 client, or ``--client httpx``), after a warm-up. All
servers of a model run at once, and each level is split into rounds that alternate between them, so that every server
meets the same background load (the benchmark machine is usually shared). Measured per server and concurrency:
generated tokens per second over the wall time, time to first token chunk (p50, p99) and inter-token latency (mean
and p99 of the gaps between token chunks), with the lowest and highest 1-minute load average seen around its
rounds. The report ends with the goals: at c=8 Capstan's tokens/s at least 4x the plain loop's; at c=1 its TTFT p50
within 10% of the plain loop's; with vLLM, capstan-vllm within 10% of vllm.

    python bench/llm.py                                  # tiny and small, all servers (a few minutes on 2 cores)
    python bench/llm.py --models tiny --requests 8 --rounds 2    # a smoke run
    python bench/llm.py --model /models/my-llm --tokens 128 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _util import free_port, stop, wait_healthy  # noqa: E402  # bench/ is no package: the path goes first

# bench/queue.py would shadow the standard library's queue, which torch imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "the quick brown fox jumps over"
CONCURRENCY = (1, 8, 32)


# ---------------------------------------------------------------------------------------------------- models


def build_model(kind: str, folder: Path) -> Path:
    """The ``tiny`` model of the tests, or the ``small`` 6-layer/256-wide GPT-2 with the same tokenizer."""
    sys.path.insert(0, str(ROOT / "tests" / "llm"))
    from llm_tiny_model import build_tiny_model  # type: ignore[import-not-found]  # tests/llm goes on the path above

    build_tiny_model(folder)
    if kind == "tiny":
        return folder
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=256, n_layer=6, n_head=8,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model: Any = GPT2LMHeadModel(config)  # transformers leaves Module.eval untyped
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    model: str
    cold_start_s: float


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
            "BENCH_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}


def _start(name: str, command: list[str], env: dict[str, str], port: int, health: str, model: str,
           log: Path) -> Server:
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url + health, process, timeout=600)
    except (RuntimeError, TimeoutError) as exc:
        stop(process)
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{name} did not start ({exc}): {' | '.join(tail)}") from None
    return Server(name, process, url, model, time.perf_counter() - started)


def start_server(name: str, model_dir: Path, threads: int, logs: Path, max_num_seqs: int = 32,
                 gpu_memory_utilization: float | None = None) -> Server:
    """Start one server on a free port; `RuntimeError` (with its output's last lines) when it cannot.
    ``gpu_memory_utilization`` goes to both vLLM servers alike (on vLLM's CPU build: the share of the machine's
    memory it reserves, whose default 0.9 cannot be met beside the other servers)."""
    reserve = [] if gpu_memory_utilization is None else ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    port = free_port()
    env = _env(threads)
    log = logs / f"{name}.log"
    if name in ("capstan", "capstan-vllm"):
        command = [sys.executable, "-m", "capstan", "serve", str(model_dir), "--name", "bench", "--host",
                   "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_num_seqs), "--max-waiting", "256",
                   "--no-access-log"]
        if name == "capstan-vllm":
            command += ["--backend", "vllm", *reserve]
        return _start(name, command, env, port, "/v2/health/ready", "bench", log)
    if name == "peer":
        env["BENCH_MODEL_DIR"] = str(model_dir)
        command = [sys.executable, "-m", "uvicorn", "hf_generate_loop:app", "--app-dir", str(ROOT / "bench" / "peers"),
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
        return _start(name, command, env, port, "/health", "peer", log)
    if name == "vllm":
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                   "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
                   "--max-num-seqs", str(max_num_seqs), *reserve]
        return _start(name, command, env, port, "/health", "bench", log)
    raise ValueError(f"unknown server {name!r}")


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def unavailable(name: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    if name in ("vllm", "capstan-vllm") and importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    return None


# ---------------------------------------------------------------------------------------------------- load


@dataclass
class RequestTiming:
    ttft_s: float
    gaps_s: list[float]
    tokens: int
    error: str | None = None


def _body(server: Server, tokens: int) -> dict[str, Any]:
    return {"model": server.model, "prompt": PROMPT, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}


class _Tally:
    """One streamed completion as the client sees it: the arrival of each token's chunk and the usage."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.arrivals: list[float] = []
        self.completion = 0

    def event(self, payload: bytes, now: float) -> None:
        """One ``data:`` payload. A token's chunk is one with a choice that does not finish it (its text may be
        empty while a multi-byte character is unfinished); the usage chunk gives the completion tokens."""
        if payload == b"[DONE]":
            return
        chunk = orjson.loads(payload)
        if chunk.get("usage"):
            self.completion = int(chunk["usage"]["completion_tokens"])
        if any(choice.get("finish_reason") is None for choice in chunk.get("choices") or ()):
            self.arrivals.append(now)

    def timing(self) -> RequestTiming:
        if not self.arrivals:
            return RequestTiming(0.0, [], self.completion, "no tokens streamed")
        gaps = [b - a for a, b in itertools.pairwise(self.arrivals)]
        return RequestTiming(self.arrivals[0] - self.started, gaps, self.completion or len(self.arrivals))


async def one_request(client: httpx.AsyncClient, server: Server, tokens: int) -> RequestTiming:
    """One streamed completion of ``tokens`` tokens with httpx (``--client httpx``): time to the first token's chunk,
    the gaps between later ones, and the completion tokens the usage reports."""
    tally = _Tally(time.perf_counter())
    async with client.stream("POST", f"{server.url}/v1/completions", json=_body(server, tokens)) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")[:200]
            return RequestTiming(0.0, [], 0, f"HTTP {response.status_code}: {text}")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                tally.event(line[6:].encode(), time.perf_counter())
    return tally.timing()


class RawConnection:
    """A keep-alive HTTP/1.1 connection that streams completions with asyncio's streams and no HTTP library
    (``--client raw``, the default): the load generator shares the machine's two cores with the server it
    measures, and httpx spends about 0.3 ms of CPU per streamed chunk, which a server streaming hundreds of tokens
    a second pays for in its own throughput."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.host, _, port = server.url.removeprefix("http://").rpartition(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, tokens: int) -> RequestTiming:
        """One streamed completion (a new connection when the last one was closed)."""
        payload = orjson.dumps(_body(self.server, tokens))
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        tally = _Tally(time.perf_counter())
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(head + payload)
        status, headers = await self._head(self.reader)
        if status != 200:
            body = await self._whole(self.reader, headers)
            return RequestTiming(0.0, [], 0, f"HTTP {status}: {body.decode(errors='replace')[:200]}")
        buffered = b""
        async for piece in self._pieces(self.reader, headers):
            now = time.perf_counter()
            buffered += piece
            *events, buffered = buffered.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: "):
                    tally.event(event[6:], now)
        if headers.get("connection") == "close":
            await self.close()
        return tally.timing()

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip().lower()
        return int(lines[0].split()[1]), headers

    @staticmethod
    async def _pieces(reader: asyncio.StreamReader, headers: dict[str, str]) -> Any:
        """The body as it arrives: chunked transfer encoding, or a Content-Length."""
        if headers.get("transfer-encoding") == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                yield await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")  # no trailers are sent
        else:
            yield await reader.readexactly(int(headers.get("content-length", "0")))

    @classmethod
    async def _whole(cls, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        return b"".join([piece async for piece in cls._pieces(reader, headers)])


@dataclass
class Level:
    server: str
    model: str
    concurrency: int
    requests: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_mean_ms: float
    itl_p99_ms: float
    errors: int
    load_before: float
    load_after: float
    first_error: str | None = None


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Round:
    timings: list[RequestTiming]
    wall_s: float
    load_before: float
    load_after: float


async def run_round(server: Server, concurrency: int, requests: int, tokens: int, client: str = "raw") -> Round:
    """``requests`` streamed completions, ``concurrency`` at a time (each client sends back to back on its own
    keep-alive connection)."""
    remaining = list(range(requests))
    timings: list[RequestTiming] = []

    async def raw_worker() -> None:
        connection = RawConnection(server)
        try:
            while remaining:
                remaining.pop()
                timings.append(await connection.request(tokens))
        finally:
            await connection.close()

    async def httpx_worker(http: httpx.AsyncClient) -> None:
        while remaining:
            remaining.pop()
            timings.append(await one_request(http, server, tokens))

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        workers = [raw_worker() if client == "raw" else httpx_worker(http) for _ in range(concurrency)]
        await asyncio.gather(*workers)
        wall = time.perf_counter() - started
        return Round(timings, wall, load_before, os.getloadavg()[0])


def summarise(server: str, model: str, concurrency: int, rounds: list[Round]) -> Level:
    """One level's figures over its rounds: tokens over the summed wall time, quantiles over every request."""
    timings = [t for r in rounds for t in r.timings]
    ok = [t for t in timings if t.error is None]
    errors = [t.error for t in timings if t.error is not None]
    gaps = [g for t in ok for g in t.gaps_s]
    ttfts = [t.ttft_s for t in ok]
    loads = [x for r in rounds for x in (r.load_before, r.load_after)]
    return Level(server, model, concurrency, len(timings), sum(t.tokens for t in ok) / sum(r.wall_s for r in rounds),
                 _quantile(ttfts, 0.5) * 1000, _quantile(ttfts, 0.99) * 1000,
                 (statistics.fmean(gaps) if gaps else float("nan")) * 1000, _quantile(gaps, 0.99) * 1000,
                 len(errors), min(loads), max(loads), errors[0] if errors else None)


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    levels: list[Level] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    cold_start_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)


def _find(report: Report, server: str, model: str, concurrency: int) -> Level | None:
    return next((lv for lv in report.levels
                 if (lv.server, lv.model, lv.concurrency) == (server, model, concurrency)), None)


def goals(report: Report, model: str) -> list[str]:
    """The issue's goals for one model, as lines: the ratio, the goal, met or not."""
    lines = []
    ours, peer = _find(report, "capstan", model, 8), _find(report, "peer", model, 8)
    if ours and peer and peer.tokens_per_s > 0:
        ratio = ours.tokens_per_s / peer.tokens_per_s
        lines.append(f"  c=8 tokens/s, capstan / plain loop: {ratio:.2f}x (goal >= 4x: "
                     f"{'met' if ratio >= 4 else 'NOT met'})")
    ours, peer = _find(report, "capstan", model, 1), _find(report, "peer", model, 1)
    if ours and peer and peer.ttft_p50_ms > 0:
        ratio = ours.ttft_p50_ms / peer.ttft_p50_ms
        lines.append(f"  c=1 TTFT p50, capstan / plain loop: {ratio:.2f} (goal <= 1.10: "
                     f"{'met' if ratio <= 1.10 else 'NOT met'})")
    for c in CONCURRENCY:
        ours, theirs = _find(report, "capstan-vllm", model, c), _find(report, "vllm", model, c)
        if ours and theirs and theirs.tokens_per_s > 0:
            ratio = ours.tokens_per_s / theirs.tokens_per_s
            lines.append(f"  c={c} tokens/s, capstan --backend vllm / vllm: {ratio:.2f} (goal >= 0.90: "
                         f"{'met' if ratio >= 0.9 else 'NOT met'})")
    return lines


def print_report(report: Report, models: list[str]) -> None:
    print(f"\nmachine: {report.machine}")
    header = (f"{'model':8} {'server':13} {'c':>3} {'req':>4} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
              f"{'ITL mean':>9} {'ITL p99':>9} {'err':>4} {'load':>11}")
    print(header + "\n" + "-" * len(header))
    for lv in report.levels:
        print(f"{lv.model:8} {lv.server:13} {lv.concurrency:>3} {lv.requests:>4} {lv.tokens_per_s:>9.1f} "
              f"{lv.ttft_p50_ms:>7.1f}ms {lv.ttft_p99_ms:>7.1f}ms {lv.itl_mean_ms:>7.2f}ms {lv.itl_p99_ms:>7.2f}ms "
              f"{lv.errors:>4} {lv.load_before:>5.2f}-{lv.load_after:<5.2f}")
        if lv.first_error:
            print(f"    first error: {lv.first_error}")
    for name, why in report.skipped.items():
        print(f"skipped {name}: {why}")
    for name, seconds in report.cold_start_s.items():
        print(f"cold start {name}: {seconds:.1f}s (process start to ready)")
    for model in models:
        print(f"goals ({model}):")
        for line in goals(report, model) or ["  (not measured)"]:
            print(line)


async def bench_model(report: Report, model: str, model_dir: Path, servers: list[str], args: argparse.Namespace,
                      logs: Path) -> None:
    """Start every server of ``servers`` on ``model_dir`` together, warm each up, then run each concurrency level in
    rounds that alternate between the servers (so each side meets the same background load), and stop them."""
    running: list[Server] = []
    try:
        for name in servers:
            why = unavailable(name)
            if why is not None:
                report.skipped[name] = why
                continue
            try:
                server = start_server(name, model_dir, args.threads, logs, args.max_num_seqs,
                                      args.gpu_memory_utilization)
            except RuntimeError as exc:
                report.skipped[f"{name} ({model})"] = str(exc)
                continue
            report.cold_start_s[f"{name} ({model})"] = server.cold_start_s
            running.append(server)
        for server in running:
            await run_round(server, 8, 16, args.tokens, args.client)  # warm-up
        per_round = max(1, args.requests // args.rounds)
        for c in args.concurrency:
            rounds: dict[str, list[Round]] = {s.name: [] for s in running}
            for i in range(args.rounds):
                order = running[i % len(running):] + running[:i % len(running)] if running else []
                for server in order:
                    rounds[server.name].append(await run_round(server, c, max(per_round, c), args.tokens,
                                                                args.client))
            for server in running:
                level = summarise(server.name, model, c, rounds[server.name])
                report.levels.append(level)
                print(f"{model} {server.name} c={c}: {level.tokens_per_s:.1f} tok/s, TTFT p50 "
                      f"{level.ttft_p50_ms:.1f} ms, errors {level.errors}", flush=True)
    finally:
        for server in running:
            stop(server.process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,small", help="tiny, small (built here), comma-separated")
    parser.add_argument("--model", type=Path, help="a save_pretrained folder to measure instead of --models")
    parser.add_argument("--servers", default="capstan,peer,capstan-vllm,vllm")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--requests", type=int, default=64, help="requests per server and level (at least one per "
                                                                   "client per round)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per level, alternating between the servers")
    parser.add_argument("--tokens", type=int, default=32, help="generated tokens per request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="sequences batched at once (capstan, vllm)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None,
                        help="both vLLM servers: the share of memory vLLM reserves (e.g. 0.1 on vLLM's CPU build)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: raw asyncio HTTP/1.1 (light on CPU) or httpx")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    report = Report(machine={"cpus": os.cpu_count(), "gpu": _has_gpu(), "threads_per_server": args.threads,
                             "client": args.client,
                             "tokens_per_request": args.tokens, "python": sys.version.split()[0]})
    with tempfile.TemporaryDirectory(prefix="capstan-bench-llm-") as scratch:
        logs = Path(scratch) / "logs"
        logs.mkdir()
        if args.model is not None:
            targets = [(re.sub(r"\W+", "-", args.model.name) or "model", args.model)]
        else:
            targets = [(kind, build_model(kind, Path(scratch) / kind)) for kind in args.models.split(",")]
        for model, folder in targets:
            asyncio.run(bench_model(report, model, folder, servers, args, logs))
    print_report(report, [m for m, _ in targets])
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "goals": {m: goals(report, m) for m, _ in targets}},
                                        indent=2))


if __name__ == "__main__":
    main()
