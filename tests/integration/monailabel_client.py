"""Drives a MONAI Label server with MONAI Label's own Python client, as 3D Slicer's MONAI Label module does.

Not a test module: ``tests/integration/test_monailabel.py`` runs it with the Python of ``.venv-monailabel`` (it imports
``monailabel.client``, which the project's main environment does not have) and reads one JSON line from stdout::

    python tests/integration/monailabel_client.py URL COMMAND 'JSON ARGUMENTS'

Commands:

- ``info``: ``{"info": <the server's /info/ answer>}``.
- ``infer`` ``{"model", "image", "params", "out"}``: ``{"status": 200, "file", "params", "seconds"}`` (the label is
  saved under ``out``) or ``{"status": <HTTP status>, "error": <the server's answer>}``.
- ``soak`` ``{"pid", "requests", "warmup", "valid", "other", "refused", "out"}``: ``warmup`` requests, then
  ``requests`` sequential requests, valid and invalid mixed (cycling through :func:`soak_plan`), each checked
  against what it must answer; returns the counts, the time and the server's resident memory (``VmRSS`` of
  ``pid``, read from ``/proc``) after the warm-up and at the end.

Only ever give it a server on this machine (127.0.0.1): the soak reads the server's memory from ``/proc``.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

#: seconds one request may take before the client gives up (the server infers one study in a few seconds).
REQUEST_TIMEOUT_S = 180.0


def _status(error: MONAILabelClientException) -> int:
    """The HTTP status of a failed request (the client only keeps it in the message: ``Status: 422; ...``)."""
    if error.status_code:
        return int(error.status_code)
    match = re.search(r"Status: (\d+)", str(error.msg))
    return int(match.group(1)) if match else -1


def infer(client: MONAILabelClient, model: str, image: str, params: dict | None = None) -> dict[str, Any]:
    """One ``/infer`` request through the client; the answer as a JSON-able dict."""
    start = time.perf_counter()
    try:
        file, result = client.infer(model, image, dict(params or {}))
    except MONAILabelClientException as e:
        return {"status": _status(e), "error": str(e.msg), "seconds": time.perf_counter() - start}
    return {"status": 200, "file": file, "params": result, "seconds": time.perf_counter() - start}


def rss_mib(pid: int) -> float:
    """Resident memory of a process on this machine, in MiB (``VmRSS`` from ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def soak_plan(valid: str, other: str, refused: str) -> list[tuple[str, dict[str, Any], Any]]:
    """One cycle of requests: ``(kind, arguments, expected)``; ``expected`` is an HTTP status or, for a valid
    lesion inference, ``"same"`` (the answer must equal the first one: same voxel count)."""
    return [
        ("info", {}, 200),
        ("infer", {"model": "qrvae_lesion", "image": valid}, "same"),
        ("infer", {"model": "qrvae_lesion", "image": refused}, 422),  # a study without T1, T2, FLAIR
        ("infer", {"model": "qrvae_lesion", "image": other, "params": {"alpha": "2"}}, 422),
        ("infer", {"model": "no_such_model", "image": valid}, 404),
        ("datastore", {}, 200),
        ("infer", {"model": "qrvae_zmap", "image": other}, 200),
        ("infer", {"model": "qrvae_lesion", "image": other, "params": {"fdr_per": "bogus"}}, 422),
        ("info", {}, 200),
        ("infer", {"model": "qrvae_lesion", "image": "no-such-study"}, 404),
    ]


def soak(client: MONAILabelClient, args: dict[str, Any]) -> dict[str, Any]:
    plan = soak_plan(args["valid"], args["other"], args["refused"])
    reference: dict[str, Any] = {}
    failures: list[str] = []
    statuses: dict[str, int] = {}

    def one(i: int) -> None:
        kind, kwargs, expected = plan[i % len(plan)]
        if kind == "info":
            status = 200 if client.info().get("models") else -1
            answer: dict[str, Any] = {"status": status}
        elif kind == "datastore":
            studies = set(client.datastore().get("objects", {}))
            answer = {"status": 200 if {args["valid"], args["other"], args["refused"]} <= studies else -1}
        else:
            answer = infer(client, **kwargs)
        status = answer["status"]
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if expected == "same":
            voxels = answer.get("params", {}).get("lesion_voxels")
            reference.setdefault("lesion_voxels", voxels)
            ok = status == 200 and voxels == reference["lesion_voxels"]
        else:
            ok = status == expected
        if not ok:
            failures.append(f"request {i} {kind} {kwargs}: expected {expected}, got {answer}")

    for i in range(int(args["warmup"])):
        one(i)
    rss_before = rss_mib(int(args["pid"]))
    start = time.perf_counter()
    for i in range(int(args["requests"])):
        one(i)
    seconds = time.perf_counter() - start
    rss_after = rss_mib(int(args["pid"]))
    return {
        "requests": int(args["requests"]),
        "warmup": int(args["warmup"]),
        "seconds": seconds,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "statuses": statuses,
        "failures": failures,
        "lesion_voxels": reference.get("lesion_voxels"),
    }


def main(argv: list[str]) -> dict[str, Any]:
    url, command = argv[0], argv[1]
    args = json.loads(argv[2]) if len(argv) > 2 else {}
    socket.setdefaulttimeout(REQUEST_TIMEOUT_S)  # the client's http.client connections have none of their own
    out = Path(args.get("out", "."))
    out.mkdir(parents=True, exist_ok=True)
    client = MONAILabelClient(url, tmpdir=str(out))
    if command == "info":
        return {"info": client.info()}
    if command == "infer":
        return infer(client, args["model"], args["image"], args.get("params"))
    if command == "soak":
        return soak(client, args)
    raise SystemExit(f"unknown command {command!r}; expected info, infer or soak")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
