"""Local Ray next to another Ray instance on the same machine.

Ray Train's placement-group cleaner (an actor) reaches the State API by looking for
the running Ray instance; with two on the machine that lookup fails and the workers of
a stopped Tune trial keep their CPUs. init_ray tells its workers where their cluster is.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import sys
    import ray
    from pipelines.cluster.connect import init_ray, start_local_ray

    if sys.argv[1] == "plain":
        ray.init(address="local", num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1")
    else:
        init_ray()

    @ray.remote(num_cpus=0)
    def state_api():  # what the placement-group cleaner does, from inside a worker
        from ray.util.state import list_actors
        try:
            return "ok %d" % len(list_actors())
        except ConnectionError as e:
            return "failed: %s" % e

    print("PROBE", ray.get(state_api.remote()), flush=True)
""")


def _probe(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=180)
    lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE")]
    assert lines, out.stdout[-2000:] + out.stderr[-2000:]
    return lines[0]


def test_workers_reach_their_own_cluster_when_another_ray_runs():
    other = subprocess.Popen([sys.executable, "-c", "import ray, sys, time; ray.init(address='local', num_cpus=1, "
                              "include_dashboard=False); print('up', flush=True); time.sleep(300)"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        # Ray's own lookup fails with two instances: the situation this guards against.
        assert "multiple active Ray instances" in _probe("plain")
        assert _probe("init_ray").startswith("PROBE ok")
    finally:
        other.kill()
        other.wait()
