"""Training-step slowdown beside competing processes: ALL U-KAN, U-KAN_MLP and nnU-Net's PlainConvUNet, CPU.

    python benchmarks/benchmark_contention.py                   # both loads, ~2-3 min on 2 cores
    python benchmarks/benchmark_contention.py --loads busy --rounds 3 --budget-s 60      # quick
    python benchmarks/benchmark_contention.py --loads busy --profile 3    # + which operators the load slows
    python benchmarks/benchmark_contention.py --spin-counts default 1000 --repeats 2   # OpenMP settings compared

nnU-Net trains beside its own data-augmentation worker processes, so on a CPU machine a training step rarely has
the cores to itself. The script starts the competing load itself, in child processes pinned to no core:

- ``busy``: one process spinning in a Python loop;
- ``workers``: ``--workers`` processes (default 2, as ``nnUNet_n_proc_DA=2``) doing augmentation-like numpy work
  without pause (random rotations and elastic deformations with ``scipy.ndimage``, noise, gamma), as nnU-Net's
  workers do whenever training consumes batches faster than they make them.

The three networks are built once, in this process (2D, ``--batch-size`` x ``--size``^2, one class; a step is
forward + 0.5 BCE + Dice + backward + Adam). The load runs from start to end and is paused (SIGSTOP) for the quiet
phases, so quiet and loaded phases alternate within every round, each network in turn, and a drifting load of the
machine hits both alike. Each phase times ``--steps`` steps. Printed per load: each network's median quiet and
loaded phase, its slowdown factor (loaded / quiet; the range over rounds in brackets) and ALL U-KAN's factor over
the others'. The run stops starting rounds after ``--budget-s`` seconds; the load processes are killed on exit,
on Ctrl-C and on errors (and die with this process if it is killed).

``--spin-counts`` compares values of libgomp's ``GOMP_SPINCOUNT`` (``default``: the variable unset), which only a
new process's environment can set: the script runs itself once per value (``OMP_WAIT_POLICY`` unset) and
``--repeats`` times over, the values alternating, and prints per load and network the median slowdown factor and
quiet step time for each value, and the quiet time relative to the first value's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from benchmark_networks import loss_fn  # noqa: E402

from nnunet_allukan.layers import kernels  # noqa: E402
from nnunet_allukan.openmp import OPENMP_WAIT_VARIABLES  # noqa: E402
from nnunet_allukan.networks import build_table2_network  # noqa: E402

NETWORKS = ("ALL U-KAN", "U-KAN_MLP", "PlainConvUNet")
LOADS = ("busy", "workers")
# Children run single-threaded, as nnU-Net's augmentation workers do; they exit when this process is gone (the
# parent-death signal on Linux, and a check of the parent's pid everywhere) or after --child-lifetime seconds.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_BUSY = """
import os, sys, time
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(200000):
        pass
"""
_WORKER = """
import os, sys, time
import numpy as np
from scipy import ndimage
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
size, batch = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(os.getpid())
grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij")).astype(np.float32)
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(batch):  # one batch: spatial transform of image + mask, then intensity transforms
        image, mask = rng.standard_normal((3, size, size), dtype=np.float32), rng.random((size, size)) > 0.5
        angle = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=np.float32)
        centre = (size - 1) / 2
        coords = np.einsum("ij,jxy->ixy", rot, grid - centre) + centre
        coords += ndimage.gaussian_filter(rng.standard_normal(coords.shape).astype(np.float32), (0, 8, 8)) * 40
        image = np.stack([ndimage.map_coordinates(c, coords, order=3, mode="constant") for c in image])
        mask = ndimage.map_coordinates(mask.astype(np.float32), coords, order=0, mode="constant")
        image += rng.normal(0, 0.1, image.shape).astype(np.float32)
        lo = image.min()
        image = (image - lo) ** rng.uniform(0.7, 1.5) + lo
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux), also if the child is stopped then."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Load:
    """The competing processes of one load kind; paused and resumed as a group, killed on exit."""

    def __init__(self, kind: str, a: argparse.Namespace) -> None:
        self.kind, self.procs = kind, []
        lifetime = str(a.budget_s * 3 + 600)
        commands = [[sys.executable, "-c", _BUSY, lifetime]] if kind == "busy" else \
            [[sys.executable, "-c", _WORKER, lifetime, str(a.size), str(a.batch_size)]] * a.workers
        env = dict(os.environ, **_CHILD_ENV)
        try:
            for cmd in commands:
                self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None))
            time.sleep(1.0)  # imports done, the workers in their loop
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"the {kind} load process exited at start (code {p.returncode})")
            self.pause()
            print(f"load `{kind}`: process(es) {', '.join(str(p.pid) for p in self.procs)}", flush=True)
        except BaseException:
            self.kill()
            raise

    def _signal(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"the {self.kind} load process ended early (code {p.returncode})")

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        self.procs = []

    def __enter__(self) -> "Load":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def plain_conv_unet(size: int) -> torch.nn.Module:
    """nnU-Net's PlainConvUNet as its planner records it for a 2D patch of side ``size`` (stages down to 4x4,
    32-512 features, InstanceNorm, LeakyReLU), one output (no deep supervision: the same loss as the others)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n_stages = max(2, (size // 4).bit_length())
    net = PlainConvUNet(input_channels=3, n_stages=n_stages, features_per_stage=[min(32 * 2 ** i, 512)
                                                                               for i in range(n_stages)],
                        conv_op=torch.nn.Conv2d, kernel_sizes=[[3, 3]] * n_stages,
                        strides=[[1, 1]] + [[2, 2]] * (n_stages - 1), n_conv_per_stage=[2] * n_stages,
                        num_classes=1, n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True,
                        norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    net.apply(net.initialize)
    return net


def build_steps(a: argparse.Namespace) -> dict:
    """name -> a function that runs one training step of that network on its fixed batch."""
    torch.manual_seed(0)
    x = torch.randn(a.batch_size, 3, a.size, a.size)
    y = (torch.rand(a.batch_size, 1, a.size, a.size) > 0.5).float()
    builders = {"ALL U-KAN": lambda: build_table2_network(13, 3, 1),
                "U-KAN_MLP": lambda: build_table2_network(4, 3, 1), "PlainConvUNet": lambda: plain_conv_unet(a.size)}
    steps = {}
    for name in a.networks:
        net = builders[name]().train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)

        def step(net=net, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
        steps[name] = step
    return steps


def timed(step, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t


def measure(load: Load, steps: dict, a: argparse.Namespace, deadline: float) -> dict:
    phases = {name: {"quiet_s": [], "loaded_s": []} for name in steps}
    for r in range(a.rounds):
        if r and time.monotonic() > deadline:
            print(f"    budget reached after {r} round(s)", flush=True)
            break
        for name, step in steps.items():
            phases[name]["quiet_s"].append(timed(step, a.steps))
            load.resume()
            try:
                phases[name]["loaded_s"].append(timed(step, a.steps))
            finally:
                load.pause()
        print(f"    round {r + 1}: " + ", ".join(
            f"{n} {p['quiet_s'][-1]:.2f} / {p['loaded_s'][-1]:.2f} s" for n, p in phases.items()), flush=True)
    for p in phases.values():
        p["quiet_median_s"], p["loaded_median_s"] = statistics.median(p["quiet_s"]), statistics.median(p["loaded_s"])
        p["factor"] = p["loaded_median_s"] / p["quiet_median_s"]
        p["round_factors"] = [lo / q for q, lo in zip(p["quiet_s"], p["loaded_s"])]
    return phases


def profile_ops(load: Load, step, n: int, top: int) -> list[str]:
    """Where a network's loaded steps spend their extra time: torch's profiler over ``n`` quiet and ``n`` loaded
    steps, operators ordered by the self CPU time the load adds, with their calls per step and quiet time per call
    (short calls lose most: each waits for a thread that another process holds)."""
    from torch.profiler import ProfilerActivity, profile

    def self_times() -> dict:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                step()
        return {e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()}

    quiet = self_times()
    load.resume()
    try:
        loaded = self_times()
    finally:
        load.pause()
    total_q, total_l = (sum(t for t, _ in d.values()) for d in (quiet, loaded))
    lines = [f"  self CPU time per step: quiet {total_q / n / 1e3:.0f} ms, loaded {total_l / n / 1e3:.0f} ms",
             "  | operator | calls per step | quiet per call | added by the load per step |", "  |---|---:|---:|---:|"]
    extra = {k: loaded.get(k, (0, 0))[0] - quiet.get(k, (0, 0))[0] for k in set(quiet) | set(loaded)}
    for key in sorted(extra, key=extra.get, reverse=True)[:top]:
        t, count = quiet.get(key, loaded.get(key))
        lines.append(f"  | {key} | {count / n:.0f} | {t / max(count, 1):.0f} us | {extra[key] / n / 1e3:.1f} ms |")
    return lines


def report(kind: str, phases: dict, a: argparse.Namespace) -> list[str]:
    lines = [f"### Load `{kind}`: {a.steps} steps per phase, batch {a.batch_size}, {a.size}x{a.size}", "",
             "| network | quiet | loaded | slowdown (rounds) | ALL U-KAN's slowdown / this one's |",
             "|---|---:|---:|---:|---:|"]
    ref = phases.get("ALL U-KAN")
    for name, p in phases.items():
        rf = p["round_factors"]
        rel = f"{ref['factor'] / p['factor']:.2f}" if ref is not None and name != "ALL U-KAN" else "-"
        lines.append(f"| {name} | {p['quiet_median_s']:.2f} s | {p['loaded_median_s']:.2f} s | {p['factor']:.2f}x "
                     f"({min(rf):.2f}-{max(rf):.2f}) | {rel} |")
    return lines + [""]


def compare_spin_counts(a: argparse.Namespace, argv: list[str]) -> int:
    """Runs this script per ``GOMP_SPINCOUNT`` value of ``a.spin_counts``, alternating, ``a.repeats`` times over."""
    import tempfile

    child_argv, skipping = [], False
    for arg in argv:  # the same options without the comparison's own and without --json
        if arg.startswith("-"):
            skipping = arg.split("=")[0] in ("--spin-counts", "--repeats", "--json")
        if not skipping:
            child_argv.append(arg)
    runs: dict[str, list[dict]] = {v: [] for v in a.spin_counts}
    with tempfile.TemporaryDirectory(prefix="contention_") as tmp:
        for r in range(a.repeats):
            for value in a.spin_counts:
                env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT_VARIABLES}
                if value != "default":
                    env["GOMP_SPINCOUNT"] = value
                out = Path(tmp) / f"{value}_{r}.json"
                print(f"== repeat {r + 1}/{a.repeats}, GOMP_SPINCOUNT={value}", flush=True)
                code = subprocess.call([sys.executable, __file__, *child_argv, "--json", str(out)], env=env)
                if code:
                    return code
                runs[value].append(json.loads(out.read_text()))
    lines = [f"### GOMP_SPINCOUNT compared: {a.repeats} run(s) per value, medians over runs", "",
             "| load | network | " + " | ".join(f"slowdown, {v}" for v in a.spin_counts) + " | "
             + " | ".join(f"quiet step time, {v} / {a.spin_counts[0]}" for v in a.spin_counts[1:]) + " |",
             "|---|---|" + "---:|" * (2 * len(a.spin_counts) - 1)]
    result = {"spin_counts": a.spin_counts, "runs": runs}
    for kind in a.loads:
        for name in a.networks:
            factor = {v: statistics.median(run[kind][name]["factor"] for run in runs[v]) for v in a.spin_counts}
            quiet = {v: statistics.median(run[kind][name]["quiet_median_s"] for run in runs[v]) for v in a.spin_counts}
            lines.append(f"| {kind} | {name} | " + " | ".join(f"{factor[v]:.2f}x" for v in a.spin_counts) + " | "
                         + " | ".join(f"{quiet[v] / quiet[a.spin_counts[0]]:.2f}" for v in a.spin_counts[1:])
                         + " |")
    print("\n" + "\n".join(lines))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
        print(f"written to {a.json.resolve()}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="square input side, multiple of 32 (default 64, the demo's)")
    p.add_argument("--steps", type=int, default=3, help="training steps per phase (default 3)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per load (default 4)")
    p.add_argument("--workers", type=int, default=2, help="processes of the `workers` load (default 2)")
    p.add_argument("--budget-s", type=float, default=150,
                   help="no new round starts after this many seconds (default 150); every load gets a round")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after each load's rounds, profile N quiet and N loaded steps of each network and print the "
                        "operators the load slows most (default 0: no profile)")
    p.add_argument("--spin-counts", nargs="+", default=None, metavar="VALUE",
                   help="compare GOMP_SPINCOUNT values ('default': unset) in runs of this script, alternating")
    p.add_argument("--repeats", type=int, default=2, help="runs per --spin-counts value (default 2)")
    p.add_argument("--json", type=lambda v: Path(v) if v else None, default=Path("benchmark_results/contention.json"),
                   help="where to write the results as JSON ('' for nowhere; default benchmark_results/contention.json)")
    a = p.parse_args()
    if a.size % 32:
        p.error(f"--size must be a multiple of 32, got {a.size}")
    if min(a.batch_size, a.steps, a.rounds, a.workers) < 1 or a.profile < 0:
        p.error("--batch-size, --steps, --rounds and --workers must be at least 1, --profile at least 0")
    if a.spin_counts is not None:
        bad = [v for v in a.spin_counts if v != "default" and not v.isdigit()]
        if bad or a.repeats < 1:
            p.error(f"--spin-counts takes 'default' or whole numbers (got {' '.join(bad)}), --repeats at least 1")
        return compare_spin_counts(a, sys.argv[1:])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the load's clean-up runs on SIGTERM too
    openmp = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in OPENMP_WAIT_VARIABLES)
    print(f"threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, {openmp}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    print(kernels.describe("cpu"), flush=True)
    steps = build_steps(a)
    for step in steps.values():  # warm-up: the native kernels' build, lazy initialisation
        step()
        step()
    start = time.monotonic()
    result = {"args": {k: str(v) for k, v in vars(a).items()}, "threads": torch.get_num_threads()}
    for i, kind in enumerate(a.loads):
        deadline = start + a.budget_s * (i + 1) / len(a.loads)
        with Load(kind, a) as load:
            result[kind] = measure(load, steps, a, deadline)
            lines = report(kind, result[kind], a)
            for name, step in steps.items() if a.profile else ():
                lines += [f"{name}, load `{kind}`: the operators the load slows most ({a.profile} steps each)"]
                lines += profile_ops(load, step, a.profile, top=8) + [""]
        print("\n" + "\n".join(lines), flush=True)  # each load's table at once: a run cut short keeps it
    print(f"{time.monotonic() - start:.0f} s measured; load average after "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
        print(f"written to {a.json.resolve()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the load processes are killed", file=sys.stderr)
        sys.exit(130)
