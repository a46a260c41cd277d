"""benchmarks/benchmark_contention.py at a tiny size: it starts both loads, prints every network's slowdown factor
(and with --profile the operators the load slowed) and writes its JSON, and its load processes are gone when it ends, normally or on Ctrl-C."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_contention.py"
TINY = ["--size", "32", "--batch-size", "2", "--steps", "1", "--workers", "1"]


def _alive(pid: int) -> bool:
    """Running, stopped or a zombie not yet reaped: anything but gone."""
    return Path(f"/proc/{pid}").exists()


def _load_pids(text: str) -> list[int]:
    return [int(p) for line in re.findall(r"load `\w+`: process\(es\) ([\d, ]+)", text) for p in line.split(", ")]


def test_prints_the_factors_and_leaves_no_load_behind(tmp_path):
    out = tmp_path / "contention.json"
    result = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--rounds", "2", "--networks", "U-KAN_MLP",
                             "PlainConvUNet", "--profile", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pids = _load_pids(result.stdout)
    assert len(pids) == 2, result.stdout  # one busy process, one worker (--workers 1)
    assert not any(_alive(p) for p in pids)
    for load in ("busy", "workers"):
        assert re.search(rf"### Load `{load}`", result.stdout)
        for name in ("U-KAN_MLP", "PlainConvUNet"):
            assert re.search(rf"\| {name} \| [\d.]+ s \| [\d.]+ s \| [\d.]+x \([\d.]+-[\d.]+\) \|", result.stdout)
        for name in ("U-KAN_MLP", "PlainConvUNet"):  # --profile: the operators the load slowed, with figures
            table = result.stdout.split(f"{name}, load `{load}`: the operators the load slows most")[1]
            assert re.search(r"\| aten::\w+ \| \d+ \| \d+ us \| -?[\d.]+ ms \|", table.split("\n\n")[0]), table
    saved = json.loads(out.read_text())
    for load in ("busy", "workers"):
        for name in ("U-KAN_MLP", "PlainConvUNet"):
            phases = saved[load][name]
            assert len(phases["quiet_s"]) == len(phases["loaded_s"]) == 2
            assert phases["factor"] == phases["loaded_median_s"] / phases["quiet_median_s"]


def test_ctrl_c_kills_the_load(tmp_path):
    # SIGINT's default restored in the child: a test run started in the background (nohup, `&`) inherits it ignored,
    # and Python then never turns Ctrl-C into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, "--rounds", "1000", "--budget-s", "600", "--loads",
                             "workers", "--networks", "U-KAN_MLP", "--json", ""], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = ""
        deadline = time.monotonic() + 300
        while not re.search(r"round 1:", seen) and time.monotonic() < deadline:  # measuring beside its load
            seen += proc.stdout.readline()
        pids = _load_pids(seen)
        assert pids and all(_alive(p) for p in pids), seen
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, seen + rest
    for _ in range(50):  # killed and reaped by the benchmark before it exits
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), seen + rest


def test_spin_counts_run_the_script_once_per_value_and_compare(tmp_path):
    out = tmp_path / "compared.json"
    result = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--rounds", "1", "--loads", "busy", "--networks",
                             "U-KAN_MLP", "--spin-counts", "default", "1000", "--repeats", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # each child states the setting it ran under, and the comparison table has one row per load and network
    assert re.search(r"GOMP_SPINCOUNT=unset, OMP_WAIT_POLICY=unset", result.stdout), result.stdout
    assert re.search(r"GOMP_SPINCOUNT=1000, OMP_WAIT_POLICY=unset", result.stdout), result.stdout
    assert re.search(r"\| busy \| U-KAN_MLP \| [\d.]+x \| [\d.]+x \| [\d.]+ \|", result.stdout), result.stdout
    saved = json.loads(out.read_text())
    assert saved["spin_counts"] == ["default", "1000"]
    assert [len(saved["runs"][v]) for v in ("default", "1000")] == [1, 1]
    assert not list(tmp_path.glob("*_0.json"))  # the children's results live only in a temporary folder


def test_spin_counts_refuses_what_is_not_a_count():
    result = subprocess.run([sys.executable, str(SCRIPT), "--spin-counts", "default", "many"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "--spin-counts takes 'default' or whole numbers (got many)" in result.stderr
