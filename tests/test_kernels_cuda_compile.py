"""The Triton kernels compile for real GPUs, without one: every kernel variant that a training step of the
project's networks launches (float32, and float16 / bfloat16 autocast) is compiled to a cubin for sm_80 (A100) and
sm_90 (H100) by Triton's compiler and its bundled ptxas, and the compiled code has no register spills and
registers for at least 3/8 occupancy (24 of 64 warps per SM), enough resident warps to cover the loads' latency
(benchmarks/triton_variants.py; the figures per variant: benchmarks/benchmark_triton_kernels.py).

The other basis families (B-splines of order 1 and 2, rbf, chebyshev, relu) change only the kernels' basis code:
each family's variants are recorded from a stack of KA layers that launches every pass (triton_variants.
family_stacks: padded, depthwise, full spline gradients of both, rows of one position), in float32 and float16, and
compiled for both targets under the same rules; their bfloat16 variants differ from the float16 ones only in
the loads.

The launched variants are recorded, not listed: the 2D networks (the paper's embedding widths; nnU-Net's U-Nets
narrower, which keeps every layer's channel block) run a training step with the Triton kernels in Triton's
interpreter replaced by a recorder (nothing runs; every launch's argument types, pointer alignment, constexprs
and launch options are kept), in two worker processes; two more compile. Left out as too slow for what they
add: the 3D networks, which launch the same variants (the kernels see rows of positions whatever the
dimension), and Table 2's two vanilla-KAN rows with full spline gradients, which launch none (their bases go
through autograd); benchmarks/benchmark_triton_kernels.py records every network and says both. Skipped where
Triton is not installed."""
import importlib.util
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("triton") is None:  # imported by the worker processes only
    pytest.skip("Triton is not installed", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import triton_variants  # noqa: E402

MIN_OCCUPANCY = 3 / 8


def test_launched_kernel_variants_compile_for_sm80_and_sm90_without_spills():
    names = {name for name, _, _ in triton_variants.networks(dims=(2,))} - set(triton_variants.LAUNCH_NOTHING)
    names |= {name for name, _, _ in triton_variants.family_stacks()}
    launched = triton_variants.record_launches_in_processes(names, processes=2, dims=[2], unet_features=8,
                                                            families=triton_variants.FAMILIES)
    variants = sorted(set().union(*launched.values()), key=triton_variants.Variant.name)
    kernels_seen = {v.kernel for v in variants}
    assert kernels_seen == set(triton_variants.KERNEL_NAMES), launched
    assert {dict(v.signature)["x_ptr"] for v in variants} == {"*fp32", "*fp16", "*bf16"}
    cubic = {v for v in variants if v.family == ("bspline", 3)}
    families = {v.family for v in variants} - {("bspline", 3)}
    assert families == set(triton_variants.FAMILIES)
    # every family launched the same passes and tiles: both kernels, the activation sums, the coefficients' path
    launches = {family: {(v.kernel, v.signature, tuple((n, f) for n, f in v.constexprs if n not in (
        "FAMILY", "ORDER", "NB"))) for v in variants if v.family == family} for family in families}
    assert len(set(map(frozenset, launches.values()))) == 1, launches
    flags = [dict(f) for _, _, f in next(iter(launches.values()))]
    assert any(f.get("WITH_V") for f in flags) and {f.get("COEF") for f in flags} >= {1, 2} and any(
        f.get("GRAD_V") for f in flags), flags
    variants = sorted(cubic, key=triton_variants.Variant.name) + [
        v for v in variants if v not in cubic and dict(v.signature)["x_ptr"] in ("*fp32", "*fp16")]
    problems = []
    for variant, by_arch in triton_variants.compile_variants(variants, archs=(90, 80), processes=2):
        for arch in (90, 80):
            r = by_arch.get(arch, {"error": "no result"})
            if "error" in r:
                problems.append(f"{variant.name()} sm_{arch}: {r['error']}")
                continue
            occ = triton_variants.occupancy(r["registers"], r["shared_bytes"], variant.num_warps, arch)
            if r["spill_stores"] or r["local_bytes"] or occ["occupancy"] < MIN_OCCUPANCY:
                problems.append(f"{variant.name()} sm_{arch}: {r['registers']} registers, {r['spill_stores']} "
                                f"spill stores, {r['local_bytes']} B local, occupancy {occ['occupancy']:.2f} "
                                f"({occ['limited_by']})")
    assert not problems, f"{len(problems)} of {2 * len(variants)} compilations:\n" + "\n".join(problems)
