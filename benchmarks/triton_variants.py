"""The Triton kernel variants the project's networks launch, compiled for CUDA GPUs without a GPU.

- :func:`record_launches`: runs the networks' training steps (forward and backward; float32 and CPU autocast in
  float16 and bfloat16) with the Triton kernels in Triton's interpreter, but with both kernels replaced by a
  recorder: each launch is recorded (argument types, 16-byte alignment of the pointers, constexpr values and
  launch options, exactly as ``triton_kernels`` passes them) and nothing runs, so the networks' real sizes cost
  only their other operations. The result is a set of :class:`Variant`, one per compiled kernel the launches
  would need.
- :func:`compile_variant`: compiles one variant to a cubin for a GPU architecture with Triton's own compiler and
  ptxas (no GPU needed) and reads off the compiled code: registers and local memory per thread (``cuobjdump
  -res-usage``), spill stores (``STL`` in the SASS), shared memory, and the instructions of the channel loop.
- :func:`occupancy` and :func:`predict`: what those allow on an SM, and the time per input value at H100 SXM's
  memory bandwidth, its instruction issue rate and the memory latency the resident blocks can overlap.

:func:`record_launches` needs the kernels interpreted (:func:`interpreted_kernels`: Triton imported with
``TRITON_INTERPRET=1``, as the tests' conftest and the benchmark script set it), :func:`compile_variant` compiled
(:func:`compile_variants` starts worker processes without it).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, not an installed copy
from nnunet_allukan.paper import EMBED_DIMS  # noqa: E402
KERNEL_NAMES = ("_sums_kernel", "_grads_kernel")
_POINTER_TYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float64": "fp64"}
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}
# Table 2's vanilla-KAN rows with full spline gradients: their bases go through autograd, no kernel is launched
LAUNCH_NOTHING = ("ukan 2D", "kaonv 2D", "ukan 3D")
# The basis families other than the networks' cubic B-spline, as (basis, spline_order): family_stacks' layers.
FAMILIES = (("bspline", 1), ("bspline", 2), ("rbf", 3), ("chebyshev", 3), ("relu", 3))


@dataclass(frozen=True)
class Variant:
    """One compiled kernel: what Triton's JIT keys a compilation on for this project's kernels (the sizes C, P, G
    and the strides are not specialised: ``do_not_specialize``)."""

    kernel: str
    signature: tuple  # ((argument, type), ...) of the runtime arguments: "*fp32", "i32", ...
    constexprs: tuple  # ((argument, value), ...); a Triton dtype as its name ("fp32"), the family as its name
    aligned: tuple  # indices of the pointer arguments whose address is a multiple of 16
    num_warps: int
    num_stages: int

    @property
    def flags(self) -> dict:
        return dict(self.constexprs)

    @property
    def family(self) -> tuple:
        """(basis, spline order) of the bases the variant evaluates."""
        return self.flags["FAMILY"], self.flags["ORDER"]

    def name(self) -> str:
        c = self.flags
        x = dict(self.signature)["x_ptr"][1:]
        shape = f"{c['BLOCK_P']}x{c['BLOCK_C']}x{c['NB_PAD']}"
        if self.kernel == "_sums_kernel":
            what = "sums" + "+silu" * c["WITH_SILU"] + "+v" * c["WITH_V"] + " padded" * c["PADDED"]
        else:
            what = ("grads" + "+silu" * c["WITH_SILU"] + ("", " coef", " grad_phi*v")[c["COEF"]]
                    + " +dv" * c["GRAD_V"] + " padded" * (c["PADDED"] and c["GRAD_V"]))
        family = "" if self.family == ("bspline", 3) else (
            f" {c['FAMILY']}" + (f"{c['ORDER']}" if c["FAMILY"] == "bspline" else ""))
        return f"{what} {x} {shape} w{self.num_warps}{family}"


# ---------------------------------------------------------------------------------------------------------------
# Recording the launches (interpreted kernels)
# ---------------------------------------------------------------------------------------------------------------
def interpreted_kernels():
    """The ``triton_kernels`` module in Triton's interpreter (imported, or imported again, with TRITON_INTERPRET=1;
    the variable is restored afterwards). Raises where Triton itself was imported compiled before."""
    import importlib

    from nnunet_allukan.layers.kernels import triton_ops

    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        name = "nnunet_allukan.layers.kernels.triton_kernels"
        if name in sys.modules and not sys.modules[name].INTERPRETED:
            importlib.reload(sys.modules[name])
        triton_ops.reset()
        if not triton_ops.interpreted():
            raise RuntimeError("Triton was imported without TRITON_INTERPRET=1: record launches in a fresh process "
                               f"({triton_ops.unavailable_reason() or 'kernels compiled, not interpreted'})")
        return sys.modules[name]
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


def _int_type(value: int) -> str:
    return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"  # Triton's rule for an int argument


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the variant, runs nothing."""

    def __init__(self, name: str, kernel, seen: set):
        self.name, self.seen = name, seen
        self.parameters = inspect.signature(kernel.fn).parameters
        self.constexpr = {n for n, p in self.parameters.items() if "constexpr" in str(p.annotation)}

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, num_warps: int = 4, num_stages: int = 3, **kwargs):
        import torch

        bound = inspect.Signature(list(self.parameters.values())).bind(*args, **kwargs)
        signature, constexprs, aligned = [], [], []
        for i, (name, value) in enumerate(bound.arguments.items()):
            if name in self.constexpr:
                constexprs.append((name, value if isinstance(value, (bool, int)) else str(value)))
            elif isinstance(value, torch.Tensor):
                signature.append((name, "*" + _POINTER_TYPES[str(value.dtype)]))
                if value.data_ptr() % 16 == 0:
                    aligned.append(i)
            elif isinstance(value, int):
                signature.append((name, _int_type(value)))
            else:
                raise TypeError(f"{self.name}: argument {name} of type {type(value).__name__}")
        self.seen.add(Variant(self.name, tuple(signature), tuple(constexprs), tuple(aligned), num_warps, num_stages))


@contextlib.contextmanager
def recording(module):
    """Within: both kernels of ``module`` (interpreted ``triton_kernels``) record their launches into the yielded
    set instead of running (their outputs stay uninitialised), under the ``triton`` kernel policy."""
    from nnunet_allukan.layers import kernels

    seen: set = set()
    originals = {name: getattr(module, name) for name in KERNEL_NAMES}
    before = kernels.policy()
    for name, kernel in originals.items():
        setattr(module, name, _Recorder(name, kernel, seen))
    kernels.use("triton")
    try:
        yield seen
    finally:
        kernels.use(before)
        for name, kernel in originals.items():
            setattr(module, name, kernel)


def networks(size_2d: int = 64, size_3d: int = 32, dims=(2, 3), unet_features: int = 32,
             embed_dims: tuple = EMBED_DIMS) -> list:
    """(name, build, input shape) of every network family the project trains, each built by ``build()``: the
    paper's Table 2 rows with KA or KAN layers (all but U-KAN_MLP; 2D, and 3D where the row has one, pooled as the 3D
    trainers pool a patch of four 2x down-samplings), and nnU-Net's planned U-Nets fully KA (2D and 3D, plain and
    residual encoder; ``unet_features`` in the first stage, doubled per stage); ``embed_dims``: U-KAN's. Batch 1;
    the sizes keep every stage above one position (a conv layer's rows of one position would launch the tokens'
    variants)."""
    import torch
    from nnunet_allukan.layers import KAConv2d, KAConv3d
    from nnunet_allukan.networks import (TABLE2_ROWS, KAPlainConvUNet, KAResidualEncoderUNet,
                                         build_table2_network)
    from nnunet_allukan.training.protocol import ukan_strides

    out = []
    for row in TABLE2_ROWS.values():
        for dim in dims:
            if dim in row.conv_ops and row.name != "ukan_mlp":  # U-KAN_MLP: no KA layer
                strides = None if dim == 2 else ukan_strides([[1] * 3] + [[2] * 3] * 4, 3)
                size = size_2d if dim == 2 else size_3d
                out.append((f"{row.name} {dim}D", lambda r=row.row, d=dim, s=strides: build_table2_network(
                    r, 1, 2, dim=d, strides=s, embed_dims=embed_dims), (1, 1) + (size,) * dim))
    for dim in dims:
        n = 4
        common = dict(input_channels=1, n_stages=n, features_per_stage=[unet_features * 2 ** i for i in range(n)],
                      kernel_sizes=[[3] * dim] * n, strides=[[1] * dim] + [[2] * dim] * (n - 1), num_classes=2,
                      conv_bias=True, norm_op=torch.nn.InstanceNorm3d if dim == 3 else torch.nn.InstanceNorm2d,
                      norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                      nonlin_kwargs={"inplace": True}, deep_supervision=True,
                      conv_op=KAConv3d if dim == 3 else KAConv2d)
        shape = (1, 1) + ((size_2d if dim == 2 else size_3d),) * dim
        out.append((f"KAPlainConvUNet {dim}D", lambda c=common: KAPlainConvUNet(
            n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1), **c), shape))
        out.append((f"KAResidualEncoderUNet {dim}D", lambda c=common: KAResidualEncoderUNet(
            n_blocks_per_stage=[1] * n, n_conv_per_stage_decoder=[1] * (n - 1), **c), shape))
    return out


def family_stacks(families=FAMILIES, channels: int = 8, size: int = 16) -> list:
    """(name, build, input shape) of a stack of KA layers per basis family that launches every pass of the
    kernels: a zero-padded KAConv2d (silu and window sums), a depthwise one (activation sums, padded), one with
    full spline gradients (the bases' derivative weighted by per-basis coefficients), a depthwise one with full
    spline gradients (weighted by grad_phi * v) and a KALinear (rows of one position: a tile of channels)."""
    import torch
    from nnunet_allukan.layers import KAConv2d, KALinear

    class Stack(torch.nn.Module):
        def __init__(self, basis: str, order: int):
            super().__init__()
            grid = dict(basis=basis, spline_order=order)
            self.conv = KAConv2d(channels, channels, 3, padding=1, **grid)
            self.depthwise = KAConv2d(channels, channels, 3, padding=1, groups=channels, **grid)
            self.full = KAConv2d(channels, channels, 3, padding=1, grad_free=False, **grid)
            self.depthwise_full = KAConv2d(channels, channels, 3, padding=1, groups=channels, grad_free=False, **grid)
            self.linear = KALinear(channels, channels, **grid)

        def forward(self, x):
            y = self.depthwise_full(self.full(self.depthwise(self.conv(x))))
            return self.linear(y.flatten(2).transpose(1, 2))

    return [(f"{basis}{order if basis == 'bspline' else ''} stack", lambda b=basis, o=order: Stack(b, o),
             (1, channels, size, size)) for basis, order in families]


def record_launches(module, dtypes=("float32", "float16", "bfloat16"), only=None, families=(),
                    **network_options) -> dict[str, set]:
    """Network name -> the variants one training step launches (forward and backward, each dtype: float32 as is,
    half precision as CPU autocast; nnU-Net's AMP on CUDA casts the same operations). ``only``: names to run;
    ``network_options``: those of :func:`networks`; ``families``: also :func:`family_stacks` of these."""
    import torch

    result = {}
    with recording(module) as seen:
        for name, build, shape in networks(**network_options) + family_stacks(tuple(map(tuple, families))):
            if only is not None and name not in only:
                continue
            seen.clear()
            torch.manual_seed(0)
            net, x = build(), torch.randn(shape)
            for dtype in dtypes:
                with torch.autocast("cpu", dtype=getattr(torch, dtype), enabled=dtype != "float32"):
                    out = net(x)
                    loss = sum(o.float().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
                loss.backward()
                net.zero_grad(set_to_none=True)
            result[name] = set(seen)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Compiling one variant (compiled Triton, no GPU) and reading the compiled code
# ---------------------------------------------------------------------------------------------------------------
def _tool(name: str) -> str:
    import triton

    return getattr(triton.knobs.nvidia, name).path


_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\s+`\((\.L_x_\d+)\)")


def _loop(sass: list[str]) -> list[str]:
    """The instructions of the kernel's largest loop (from a label to the last backward branch to it)."""
    labels, best = {}, (0, 0)
    for i, line in enumerate(sass):
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        b = _BRANCH.search(line)
        if b and b.group(1) in labels and i - labels[b.group(1)] > best[1] - best[0]:
            best = (labels[b.group(1)], i)
    return [m.group(2) for line in sass[best[0]:best[1] + 1] if (m := _INSTRUCTION.search(line))]


_FLOPS = {"FFMA": 2, "FADD": 1, "FMUL": 1, "DFMA": 2, "DADD": 1, "DMUL": 1, "HFMA2": 4, "HADD2": 2, "HMUL2": 2}


def compile_variant(variant: Variant, arch: int) -> dict:
    """Compile ``variant`` for sm_``arch`` (Triton not interpreted in this process); the compiled code's figures."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import nnunet_allukan.layers.kernels.triton_kernels as module
    if module.INTERPRETED:
        raise RuntimeError("compile_variant needs Triton imported without TRITON_INTERPRET=1")
    fn = getattr(module, variant.kernel)
    constexprs = {n: (tl.dtype(v) if v in _BYTES else v) for n, v in variant.constexprs}  # ACC by its name
    signature = dict(variant.signature) | {n: "constexpr" for n in constexprs}
    attrs = {(i,): [["tt.divisibility", 16]] for i in variant.aligned}
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    regs, stack, _, local = (int(v) for v in _RES.search(usage).groups())
    everything = [m.group(2) for line in sass if (m := _INSTRUCTION.search(line))]
    loop = _loop(sass)
    ops = [op.split(".")[0] for op in loop]
    return dict(arch=arch, registers=regs, stack_bytes=stack, local_bytes=local,
                spill_stores=sum(op.split(".")[0] == "STL" for op in everything),
                spill_loads=sum(op.split(".")[0] == "LDL" for op in everything),
                shared_bytes=compiled.metadata.shared, instructions=len(everything),
                loop_instructions=len(loop), loop_flops=sum(_FLOPS.get(op, 0) for op in ops),
                loop_sfu=sum(op == "MUFU" for op in ops), loop_barriers=sum(op == "BAR" for op in ops))


def _variant(fields: dict) -> Variant:
    """A Variant from its JSON form (lists back to tuples)."""
    return Variant(**{k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
                      for k, v in fields.items()})


def _worker(jobs_file: str) -> None:
    """Subprocess entry: compile the variants of a JSON file, print one JSON line per result."""
    for job in json.loads(Path(jobs_file).read_text()):
        try:
            result = compile_variant(_variant(job["variant"]), job["arch"])
        except Exception as e:  # reported with its variant: the caller decides
            result = dict(arch=job["arch"], error=f"{type(e).__name__}: {e}")
        print(json.dumps(dict(index=job["index"], **result)), flush=True)


def _record_worker(arguments: str) -> None:
    """Subprocess entry: record the launches of some networks (one thread), print them as one JSON line."""
    import torch

    torch.set_num_threads(1)
    args = json.loads(arguments)
    launched = record_launches(interpreted_kernels(), only=set(args.pop("only")), **args)
    print(json.dumps({name: [asdict(v) for v in seen] for name, seen in launched.items()}), flush=True)


def _environment(tmp: str, interpret: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(Path(tmp) / "cache"), TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), env.get("PYTHONPATH", "")]))
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def record_launches_in_processes(names, processes: int = 2, timeout: float = 900, **options) -> dict[str, set]:
    """:func:`record_launches` of the networks ``names`` (and ``options``: dtypes, families, those of
    :func:`networks`),
    shared among ``processes`` fresh processes of one thread each (Triton interpreted there; nothing changes in
    this process)."""
    names = sorted(names)
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([sys.executable, "-c", "import sys, triton_variants as t; "
                                   "t._record_worker(sys.argv[1])",
                                   json.dumps(dict(only=names[p::processes], **options))],
                                  env=_environment(tmp, True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for p in range(processes)]
        launched = {}
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"recording worker failed ({proc.returncode}): {err[-2000:]}")
            for name, seen in json.loads(out.splitlines()[-1]).items():
                launched[name] = {_variant(v) for v in seen}
    return launched


def compile_variants(variants: list[Variant], archs=(90, 80), processes: int = 2, timeout: float = 600) -> list:
    """[(variant, {arch: figures})] for every variant, compiled in ``processes`` fresh processes (Triton not
    interpreted there; its cache in a temporary folder, so every variant is really compiled)."""
    jobs = [dict(index=i, arch=a, variant=asdict(v)) for i, v in enumerate(variants) for a in archs]
    results = [dict() for _ in variants]
    with tempfile.TemporaryDirectory() as tmp:
        env = _environment(tmp, False)
        procs = []
        for p in range(processes):
            part = Path(tmp) / f"jobs{p}.json"
            part.write_text(json.dumps(jobs[p::processes]))
            procs.append(subprocess.Popen([sys.executable, "-c", f"import triton_variants as t; "
                                           f"t._worker({str(part)!r})"], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"compile worker failed ({proc.returncode}): {err[-2000:]}")
            for line in out.splitlines():
                r = json.loads(line)
                results[r.pop("index")][r["arch"]] = r
    return list(zip(variants, results))


# ---------------------------------------------------------------------------------------------------------------
# What the compiled code allows on an SM, and the time it predicts on an H100
# ---------------------------------------------------------------------------------------------------------------
# Per SM: registers, threads, resident blocks, shared memory (bytes; 1 KiB of it reserved per block).
SM_LIMITS = {80: dict(registers=65536, threads=2048, blocks=32, shared=164 * 1024),
             90: dict(registers=65536, threads=2048, blocks=32, shared=228 * 1024)}
# H100 SXM5: HBM3 bandwidth; 132 SMs at the 1.98 GHz boost clock, 4 warp schedulers each issuing one instruction of
# 32 threads per clock (so the FP32 peak, 128 FMA lanes per SM, is 132 * 128 * 2 * 1.98e9 = 66.9 TFLOP/s).
H100 = dict(bandwidth=3.35e12, sms=132, clock=1.98e9, fp32_flops=66.9e12)
H100["issue"] = H100["sms"] * 4 * 32 * H100["clock"]  # thread-instructions per second
LATENCY_S = 700e-9  # a global load's round trip under load, assumed (not measured here)


def occupancy(registers: int, shared: int, num_warps: int, arch: int) -> dict:
    """Resident blocks and warps per SM that ``registers`` per thread and ``shared`` bytes per block allow
    (registers allocated per warp in units of 256), and the limit that binds."""
    lim = SM_LIMITS[arch]
    per_warp = -(-registers * 32 // 256) * 256
    limits = {"registers": (lim["registers"] // per_warp) // num_warps,
              "threads": lim["threads"] // (32 * num_warps), "blocks": lim["blocks"],
              "shared": lim["shared"] // (shared + 1024)}
    blocks = min(limits.values())
    return dict(blocks=blocks, warps=blocks * num_warps, occupancy=blocks * num_warps * 32 / lim["threads"],
                limited_by=min(limits, key=limits.get))


def bytes_per_value(variant: Variant, channels: int) -> float:
    """DRAM bytes per input value of the kernel's loads and stores (each value read or written once), for rows
    of ``channels`` channels: per value x (and silu or its gradient, and x's gradient), per position the sums,
    coefficients or grad_phi that the rows share."""
    sig, c = dict(variant.signature), variant.flags
    size = lambda arg: _BYTES[sig[arg][1:]]  # noqa: E731
    if variant.kernel == "_sums_kernel":
        per_value = size("x_ptr") + c["WITH_SILU"] * size("silu_ptr")
        per_position = size("out_ptr") * (1 if c["WITH_V"] else c["NB"])
    else:
        per_value = size("x_ptr") + c["WITH_SILU"] * size("grad_silu_ptr") + size("grad_x_ptr")
        per_position = ((c["COEF"] == 1) * c["NB"] * size("coef_ptr")
                        + (c["COEF"] == 2 or c["GRAD_V"]) * size("grad_phi_ptr"))
    return per_value + per_position / channels


def predict(variant: Variant, figures: dict, channels: int = 32) -> dict:
    """Per input value at H100 SXM's limits: bytes, loop flops and thread-instructions (the loop's instructions
    over the values one iteration of a block covers), and the time for 2^24 values (x 8 x 32 x 256 x 256) that
    each limit allows: memory bandwidth, instruction issue, and latency (each iteration of a block waits one
    memory round trip, then computes; the resident blocks overlap). The prediction is the largest of the three."""
    c = variant.flags
    values = c["BLOCK_P"] * c["BLOCK_C"]  # x values per loop iteration of a block
    threads = 32 * variant.num_warps
    instr = figures["loop_instructions"] * threads / values
    flops = figures["loop_flops"] * threads / values
    nbytes = bytes_per_value(variant, channels)
    occ = occupancy(figures["registers"], figures["shared_bytes"], variant.num_warps, 90)
    iteration_s = figures["loop_instructions"] * variant.num_warps / (4 * H100["clock"])  # its warps alone on an SM
    limits = {"memory": nbytes / H100["bandwidth"], "issue": instr / H100["issue"],
              "latency": (LATENCY_S + iteration_s) / (occ["blocks"] * values * H100["sms"])}
    n = 2 ** 24
    return dict(bytes=nbytes, flops=flops, instructions=instr, blocks=occ["blocks"], occupancy=occ["occupancy"],
                limited_by=occ["limited_by"], t_flops_us=flops / H100["fp32_flops"] * n * 1e6,
                **{f"t_{k}_us": v * n * 1e6 for k, v in limits.items()},
                predicted_us=max(limits.values()) * n * 1e6, bound=max(limits, key=limits.get))
