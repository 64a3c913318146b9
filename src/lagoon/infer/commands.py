"""``lagoon serve CKPT --port P``: load a checkpoint and serve it over an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from lagoon.errors import LagoonError


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API")
    serve.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory (lagoon or Hugging Face Laguna)")
    serve.add_argument("--config", default=None, metavar="TOML", help="run config whose [serve] section to use")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set serve.max_batch=8 (repeatable)")
    serve.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (default 8000; 0 picks a free one)")
    serve.add_argument("--max-batch", type=int, default=None, help="most requests decoded together (default 32)")
    serve.add_argument("--max-model-len", type=int, default=None, help="longest prompt + completion in tokens")
    serve.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                       help="weights dtype (default: the checkpoint's)")
    serve.add_argument("--device", default=None, help="torch device (default cpu)")
    serve.add_argument("--served-model-name", default=None, help="model id for clients (default: CKPT's name)")
    serve.add_argument("--policy-version", type=int, default=None, help="policy version of the initial weights")
    serve.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=run_serve)


def serve_config(args: argparse.Namespace):
    from lagoon.config import load_config

    cli = {"host": args.host, "port": args.port, "max_batch": args.max_batch, "max_model_len": args.max_model_len,
           "dtype": args.dtype, "device": args.device, "served_model_name": args.served_model_name,
           "policy_version": args.policy_version, "threads": args.threads}
    overrides = list(args.overrides) + [f"serve.{key}={_toml(value)}" for key, value in cli.items() if value is not None]
    return load_config(args.config, overrides).serve


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def run_serve(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise LagoonError(f"checkpoint directory {checkpoint} does not exist")
    config = serve_config(args)
    # Bind first: a taken port fails before minutes of loading, and port 0 resolves to a real one.
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as error:
        raise LagoonError(f"cannot listen on {config.host}:{config.port}: {error.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)

    import torch
    import uvicorn

    from lagoon.infer.engine import Engine
    from lagoon.infer.server import create_app
    from lagoon.infer.state import ServerState

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
    engine = Engine.from_checkpoint(checkpoint, dtype=dtype, device=config.device, max_batch=config.max_batch,
                                    max_model_len=config.max_model_len, max_prefill_tokens=config.max_prefill_tokens,
                                    policy_version=config.policy_version)
    name = config.served_model_name or checkpoint.resolve().name
    state = ServerState(engine=engine, model_name=name, config=config, checkpoint=checkpoint)
    _warn_if_template_differs(engine)
    app = create_app(state)
    host, port = sock.getsockname()[:2]
    tokenizer = "with tokenizer" if engine.tokenizer is not None else "token ids only (no tokenizer.json)"
    print(f"lagoon serve: {name} ({tokenizer}, policy version {engine.policy_version}) on http://{host}:{port}",
          flush=True)
    engine.start()
    try:
        server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
        server.run(sockets=[sock])
    finally:
        engine.stop()
    return 0


def _warn_if_template_differs(engine) -> None:
    from lagoon.tokens import chat_template

    template = getattr(engine.tokenizer, "chat_template", None)
    if template is not None and template.strip() != chat_template().strip():
        print("lagoon serve: note: the checkpoint's chat template differs from Laguna's; chat requests are "
              "rendered in Laguna's format", file=sys.stderr, flush=True)
