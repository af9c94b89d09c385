"""``looptool operator`` as a process, the way the chart runs it: settings file, real executor
(``looptool.shared.loop.stages`` through gRPC), metrics port, kopf liveness endpoint, SIGTERM.

No LoopTool services are running here, so a valid round must fail cleanly in its first data stage
(a reason and a message in status, not a crashed operator), and an invalid one must get InvalidSpec.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from functools import partial

from support.fake_kube import FakeKubeApi
from support.net import free_port
from support.waiting import wait_for as _wait_for

# The operator process takes a while to start; its endpoints refuse connections until then.
wait_for = partial(_wait_for, timeout=60.0, interval=0.1, retry_on=(OSError,))

LR = ("looptool.io/v1alpha1", "looprounds")


def test_operator_command_runs_reports_and_stops(tmp_path):
    metrics, health, dead = free_port(), free_port(), free_port()
    settings = tmp_path / "operator.yaml"
    settings.write_text("stageRetries: 0\nprogressSeconds: 0.5\npollSeconds: 2\n")
    env = {
        **os.environ,
        "LOOPTOOL_STORAGE__ROOT": str(tmp_path / "store"),
        # every service points at a closed port: the first gRPC call fails with UNAVAILABLE
        **{f"LOOPTOOL_SERVICES__{s.upper()}__PORT": str(dead) for s in ("inference", "toolsim", "synthesizer", "expander", "trainer")},
    }
    with FakeKubeApi() as api:
        proc = subprocess.Popen(
            [sys.executable, "-m", "looptool.cli", "operator", "--settings", str(settings), "--api-url", api.url,
             "-n", "default", "--metrics-port", str(metrics), "--liveness", f"http://127.0.0.1:{health}/healthz"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2).status == 200,
                     what="kopf liveness endpoint")
            api.create(*LR, {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "bad"},
                             "spec": {"toolset": {"bfcl": {"category": "simple_python"}}}})  # no model at all
            api.create(*LR, {"apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "nosvc"},
                             "spec": {"baseModel": {"builtin": "tiny"}, "toolset": {"bfcl": {"category": "simple_python", "limit": 3}},
                                      "synthesis": {"numDialogues": 2}}})
            bad = wait_for(lambda: ((api.get(*LR, "bad") or {}).get("status") or {}).get("reason") == "InvalidSpec" and api.get(*LR, "bad")["status"],
                           what="InvalidSpec on 'bad'")
            assert "spec.baseModel" in bad["message"]
            failed = wait_for(lambda: ((api.get(*LR, "nosvc") or {}).get("status") or {}).get("phase") == "Failed" and api.get(*LR, "nosvc")["status"],
                              what="'nosvc' to fail in its first stage")
            assert failed["stages"]["synthesize"]["state"] == "Failed" and failed["message"].startswith("synthesize: ")
            # a StageError from looptool.shared.loop.stages, not an unexpected exception
            assert failed["reason"] != "InternalError" and "UNAVAILABLE" in failed["message"], failed
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
            assert 'looptool_operator_round_phase{namespace="default",phase="Failed",round="nosvc"} 1.0' in text
            assert "looptool_operator_invalid_specs_total 1.0" in text
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
        assert proc.returncode == 0, out[-3000:]
