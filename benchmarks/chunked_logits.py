"""What a token-level divergence holds for its backward pass, and what it costs, unchunked, chunked and fused.

For N scored tokens, a vocabulary V and a student width d (default: 2,048 tokens, SmolLM2's V = 49,152, d = 576),
each method computes the divergence between the student's logits ``h @ W.T`` and a teacher's logits [N, V], then
its backward pass:

==============  ===========================================================================================
method          how
==============  ===========================================================================================
``unchunked``   ``unikd.divergences`` / ``unikd.losses`` on the full [N, V] logits (the projection's output)
``chunked``     ``unikd.chunked.chunked_divergence`` on the same logits, ``--chunk`` rows at a time
``fused``       ``unikd.chunked.fused_linear_divergence``: the projection applied per chunk, logits never stored
==============  ===========================================================================================

``held_mb``: the tensors autograd keeps for the backward pass once the forward has returned (saved-tensor hooks,
alive ones only; the inputs h, W and the teacher's logits are not counted), plus the student logits the
projection's output holds (unchunked and chunked). ``seconds``: the median forward + backward over ``--repeats``
(process CPU time on a CPU, wall on CUDA), and ``ratio`` to the unchunked one measured in the same run. Every
method's loss and gradients are checked against the unchunked ones (1e-4 relative).

    python benchmarks/chunked_logits.py --out docs/benchmarks/chunked_logits_cpu.json
    python benchmarks/chunked_logits.py --tiny      # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

from unikd import losses as L
from unikd.chunked import chunked_divergence, fused_linear_divergence

METHODS = ("unchunked", "chunked", "fused")


def _loss(method: str, h, w, t, name: str, parameter, chunk: int):
    if method == "fused":
        return fused_linear_divergence(h, w, None, t, name, chunk=chunk, parameter=parameter), None
    logits = F.linear(h, w)
    if method == "chunked":
        return chunked_divergence(logits, t, name, chunk=chunk, parameter=parameter), logits
    spec = L.REGISTRY["logits"][name]
    extra = {spec.parameter: parameter} if spec.parameter else {}
    return spec.fn(logits, t, **extra), logits


def _held_bytes(method, h, w, t, name, parameter, chunk) -> int:
    held = []

    def pack(x):
        held.append((weakref.ref(x), x.numel() * x.element_size(), x.untyped_storage().data_ptr()))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss, logits = _loss(method, h, w, t, name, parameter, chunk)
    inputs = {x.untyped_storage().data_ptr() for x in (h, w, t)}
    alive = {ptr: size for ref, size, ptr in held if ref() is not None and ptr not in inputs}
    if logits is not None:
        alive[logits.untyped_storage().data_ptr()] = logits.numel() * logits.element_size()
    del loss
    return sum(alive.values())


def _clock(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--losses", default="kl,jsd")
    ap.add_argument("--tiny", action="store_true", help="A few seconds: 64 tokens, V = 500.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.tiny:
        args.tokens, args.vocab, args.width, args.chunk, args.repeats = 64, 500, 16, 16, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(args.tokens, args.width, generator=g).to(device)
    w0 = (torch.randn(args.vocab, args.width, generator=g) / args.width**0.5).to(device)
    t = (3 * torch.randn(args.tokens, args.vocab, generator=g)).to(device)
    result = {"setup": vars(args) | {"out": str(args.out), "device": str(device)}, "losses": {}}
    for name in args.losses.split(","):
        parameter = 0.5 if name == "jsd" else None
        rows, reference = {}, None
        for method in METHODS:
            h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
            held = _held_bytes(method, h, w, t, name, parameter, args.chunk)
            seconds = []
            for _ in range(args.repeats):
                h.grad = w.grad = None
                start = _clock(device)
                loss, _ = _loss(method, h, w, t, name, parameter, args.chunk)
                loss.backward()
                seconds.append(_clock(device) - start)
            grads = (loss.detach(), h.grad, w.grad)
            if reference is None:
                reference = grads
            same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, reference))
            rows[method] = {"held_mb": held / 2**20, "seconds": statistics.median(seconds), "same_as_unchunked": same}
        for row in rows.values():
            row["ratio"] = row["seconds"] / rows["unchunked"]["seconds"]
        result["losses"][name] = rows
    print(json.dumps(result["losses"], indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
