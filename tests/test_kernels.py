"""The Triton kernels against the PyTorch reference, through Triton's interpreter on this CPU (fp32 and fp16).

Triton 3.9 reads `TRITON_INTERPRET` when it is imported (its library functions are decorated then) and when a
kernel is decorated, so it must be set before the first `import triton` in the process: here, at collection, when
there is no CUDA (`kernels.triton_kernels()` would set it too, and refuses if Triton came first). The kernels then
run in-process on CPU tensors. The end-to-end check runs the streaming exactness tests in a subprocess with
`SONATE_KERNELS=triton`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sonate import kernels
from sonate.kernels import block_mask, reference
from sonate.models.config import SonateConfig
from sonate.models.positions import chunk_rope_tables, prefix_rope_tables
from sonate.models.teacher_forcing import CLEAN, NOISY, PREFIX, teacher_forward, token_layout
from sonate.models.transformer import SonateModel
from tests.conftest import random_conditioning, random_latents, random_phonemes, small_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
ROOT = Path(__file__).parent.parent
ATOL = {torch.float32: 1e-4, torch.float16: 1e-2}


@pytest.fixture(scope="module")
def triton_ops():
    return kernels.triton_kernels()


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    error = (got.float() - want.float()).abs().max().item()
    assert error <= ATOL[dtype], f"max abs error {error:.3g} > {ATOL[dtype]:g}"


def _qkv(batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, head_dim: int, dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_dim, generator=generator).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, generator=generator).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, generator=generator).to(dtype)
    return q, k, v


# Every query length meets every cache length, in both dtypes; GQA group and head_dim cycle so that every query
# length sees both head dims and every pair (group, head_dim) occurs. Three sequences of different fill share a launch.
CHUNK_CASES = [
    (q_len, cache, [1, 2, 4][i % 3], [64, 128][(i // 2) % 2])
    for i, (q_len, cache) in enumerate((q, c) for q in (1, 5, 17, 129) for c in (0, 1, 300))
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("q_len", "cache", "group", "head_dim"), CHUNK_CASES)
def test_chunk_attention_matches_reference(triton_ops, q_len, cache, group, head_dim, dtype) -> None:
    kv_heads, slack = 2, 11  # the buffer runs past every sequence's keys, as the cache's visible buffer does
    q, k, v = _qkv(3, kv_heads * group, kv_heads, q_len, q_len + cache + slack, head_dim, dtype, seed=q_len + cache)
    lengths = q_len + torch.tensor([cache, cache // 2, cache // 3])
    want = reference.chunk_attention(q.float(), k.float(), v.float(), lengths)
    for row, n in enumerate(lengths.tolist()):  # what no sequence may read is poison
        k[row, :, n:], v[row, :, n:] = float("nan"), float("nan")
    _close(triton_ops.chunk.chunk_attention(q, k, v, lengths), want, dtype)


@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("q_len", [1, 17])
def test_split_kv_matches_reference(triton_ops, q_len: int, splits: int) -> None:
    """Flash-decoding: key slices merged by their log-sum-exp; the shortest sequence leaves slices empty."""
    q, k, v = _qkv(3, 4, 2, q_len, q_len + 300, 64, torch.float32, seed=splits)
    lengths = torch.tensor([q_len + 300, q_len + 40, 3])
    want = reference.chunk_attention(q, k, v, lengths)
    _close(triton_ops.chunk.chunk_attention(q, k, v, lengths, splits=splits), want, torch.float32)


def test_chunk_attention_without_lengths_and_strided(triton_ops) -> None:
    """All keys visible; q, k, v as the transformer hands them over: [B, T, H, D] transposed."""
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in _qkv(2, 4, 2, 20, 70, 64, torch.float32))
    assert not q.is_contiguous()
    _close(triton_ops.chunk.chunk_attention(q, k, v), reference.chunk_attention(q, k, v), torch.float32)


LAYOUTS = [  # (clean chunks, noisy chunks, window, heads, kv_heads, head_dim, dtype)
    (3, [0, 1, 2], 2, 2, 1, 64, torch.float32),
    (4, [3], 1, 2, 2, 128, torch.float32),
    (3, [0, 2], 2, 4, 2, 64, torch.float16),
]


@pytest.mark.parametrize(("clean", "noisy", "window", "heads", "kv_heads", "head_dim", "dtype"), LAYOUTS)
def test_block_causal_forward_and_backward_match_autograd_of_reference(
    triton_ops, clean, noisy, window, heads, kv_heads, head_dim, dtype
) -> None:
    layout = token_layout(small_config(), clean, noisy)
    tokens = len(layout.kind)
    q, k, v = (x.requires_grad_() for x in _qkv(2, heads, kv_heads, tokens, tokens, head_dim, dtype, seed=clean))
    grad = torch.randn(2, heads, tokens, head_dim, generator=torch.Generator().manual_seed(9)).to(dtype)
    out = triton_ops.block_causal.block_causal_attention(q, k, v, kernels.block_causal_mask(layout, window))
    out.backward(grad)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    want = reference.block_causal_attention(q32, k32, v32, layout, window)
    want.backward(grad.float())
    _close(out, want, dtype)
    for got, ref in ((q.grad, q32.grad), (k.grad, k32.grad), (v.grad, v32.grad)):
        _close(got, ref, dtype)


@pytest.mark.parametrize(("block_m", "block_n"), [(32, 32), (128, 64), (64, 16)])
@pytest.mark.parametrize("window", [1, 2, 8])
def test_block_mask_tiles_are_exact(block_m: int, block_n: int, window: int) -> None:
    """Full tiles are all visible, empty tiles all hidden, and the host formula is the layout's mask."""
    layout = token_layout(small_config(), 5, [4, 0, 1, 2, 3])
    mask = kernels.block_causal_mask(layout, window)
    dense = layout.mask(window)
    assert torch.equal(
        block_mask.visible(layout.kind[:, None], layout.chunk[:, None], layout.kind[None], layout.chunk[None], window),
        dense,
    )
    classes = mask.classes(block_m, block_n)
    for i in range(classes.shape[0]):
        for j in range(classes.shape[1]):
            tile = dense[i * block_m : (i + 1) * block_m, j * block_n : (j + 1) * block_n]
            assert (classes[i, j] == block_mask.EMPTY) == (not tile.any())
            assert (classes[i, j] == block_mask.FULL) == bool(tile.all())
    assert (classes == block_mask.EMPTY).any() and (classes == block_mask.FULL).any()
    assert (PREFIX, CLEAN, NOISY) == (0, 1, 2)  # the literals of `visible` and the kernel's `_visible`
    lists = mask.tiles(block_m, block_n, torch.device("cpu"))
    for i in range(classes.shape[0]):
        partial = lists.partial_index[i, : lists.partial_count[i]]
        full = lists.full_index[i, : lists.full_count[i]]
        assert sorted(partial.tolist() + full.tolist()) == (classes[i] != block_mask.EMPTY).nonzero()[:, 0].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels", [64, 1536])
def test_modulated_norm_matches_reference(triton_ops, channels: int, dtype) -> None:
    """shift and scale as the transformer passes them: strided slices of a [B, T, 6, C] tensor, or one per batch."""
    generator = torch.Generator().manual_seed(channels)
    x = (3 * torch.randn(2, 37, channels, generator=generator) + 1).to(dtype)
    mod = torch.randn(2, 37, 6, channels, generator=generator).to(dtype)
    per_token = mod.unbind(2)[:2]
    per_batch = tuple(m[:, :1] for m in mod[:, :, 2:4].unbind(2))
    for shift, scale in (per_token, per_batch):
        want = reference.modulated_norm(x.float(), shift.float(), scale.float(), 1e-6)
        _close(triton_ops.norm.modulated_norm(x, shift, scale, 1e-6), want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_gated_residual_matches_reference(triton_ops, dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = (torch.randn(2, 37, 1536, generator=generator).to(dtype) for _ in range(2))
    gate = torch.randn(2, 37, 6, 1536, generator=generator).to(dtype).unbind(2)[2]
    for g in (gate, gate[:, :1]):
        want = reference.gated_residual(x.float(), y.float(), g.float())
        _close(triton_ops.residual.gated_residual(x, y, g), want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_apply_rope_matches_reference(triton_ops, head_dim: int, dtype) -> None:
    """Real tables — chunk positions, and the sinks' zeroed channels — on the layouts the model hands over."""
    cfg = SonateConfig.preset("tiny", dim=4 * head_dim)
    cos, sin = (t[0] for t in chunk_rope_tables(cfg, torch.tensor([3])))
    generator = torch.Generator().manual_seed(head_dim)
    tokens = cos.shape[0]
    transposed = torch.randn(2, tokens, 3, head_dim, generator=generator).to(dtype).transpose(1, 2)
    gathered = torch.randn(2, 2, 3, tokens, head_dim, generator=generator).to(dtype)  # [layers, B, Hkv, T, D]
    for x in (transposed, gathered):
        want = reference.apply_rope(x.float(), cos, sin)
        _close(triton_ops.rope.apply_rope(x, cos.to(dtype), sin.to(dtype)), want, dtype)
    sink_cos, sink_sin = prefix_rope_tables(cfg)
    sinks = torch.randn(2, 3, sink_cos.shape[0], head_dim, generator=generator)
    got = triton_ops.rope.apply_rope(sinks, sink_cos, sink_sin)
    _close(got, reference.apply_rope(sinks, sink_cos, sink_sin), torch.float32)
    assert (got[..., : head_dim // 4] == 0).all()  # the rotated channels of a sink carry nothing


def test_dispatch_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = _qkv(1, 2, 2, 5, 9, 32, torch.float32)
    monkeypatch.setenv("SONATE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="choose one of auto, reference, triton"):
        kernels.backend()
    monkeypatch.setenv("SONATE_KERNELS", "auto")
    assert kernels.backend() == ("triton" if torch.cuda.is_available() else "reference")
    monkeypatch.setenv("SONATE_KERNELS", "triton")
    assert kernels.backend() == "triton"
    _close(kernels.chunk_attention(q, k, v), reference.chunk_attention(q, k, v), torch.float32)
    with pytest.raises(ValueError, match="head_dim must be a power of two"):
        kernels.chunk_attention(q[..., :24], k[..., :24], v[..., :24])
    with pytest.raises(ValueError, match="no bfloat16"):
        kernels.gated_residual(*(torch.ones(1, 2, 8, dtype=torch.bfloat16) for _ in range(3)))
    x = torch.randn(1, 4, 16, requires_grad=True)  # no backward in the fused kernels: autograd gets the reference
    assert kernels.modulated_norm(x, x[:, :1].detach(), x[:, :1].detach(), 1e-6).grad_fn is not None


def test_masked_attention_stays_the_reference_and_block_causal_equals_it(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = token_layout(small_config(), 2, [0, 1])
    tokens = len(layout.kind)
    q, k, v = _qkv(1, 2, 2, tokens, tokens, 32, torch.float32)
    want = reference.masked_attention(q, k, v, layout.mask(2))
    for choice in ("reference", "triton"):
        monkeypatch.setenv("SONATE_KERNELS", choice)
        assert torch.equal(kernels.masked_attention(q, k, v, layout.mask(2)), want)
        _close(kernels.block_causal_attention(q, k, v, layout, 2), want, torch.float32)
        _close(kernels.block_causal_attention(q, k, v, kernels.block_causal_mask(layout, 2)), want, torch.float32)


def test_teacher_forward_and_backward_on_the_block_causal_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training forward wired to `block_causal_attention` (a mask built once, every layer reusing it) gives the
    reference teacher's velocities and parameter gradients."""
    cfg = small_config()
    torch.manual_seed(0)
    model = SonateModel(cfg)
    batch, chunks = 2, 3
    cond, phonemes = random_conditioning(cfg, batch), random_phonemes(cfg, batch, chunks)
    clean, noisy = random_latents(cfg, batch, chunks, seed=1), random_latents(cfg, batch, chunks, seed=2)
    t = torch.rand(batch, chunks, generator=torch.Generator().manual_seed(3))

    def velocities_and_grads() -> list[torch.Tensor]:
        model.zero_grad()
        v_a, v_v = teacher_forward(model, model.conditioning(cond), clean, phonemes, noisy, phonemes, t)
        (v_a.square().mean() + v_v.square().mean()).backward()
        return [v_a.detach(), v_v.detach(), *(p.grad.clone() for p in model.blocks.parameters())]

    want = velocities_and_grads()  # the reference: SDPA under the dense mask
    monkeypatch.setenv("SONATE_KERNELS", "triton")
    for got, ref in zip(velocities_and_grads(), want, strict=True):
        _close(got, ref, torch.float32)


def test_importing_the_kernels_does_not_import_triton() -> None:
    code = "import sys, sonate.kernels, sonate.models.sampler; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def compile_for_hopper() -> list[str]:
    """Compile every kernel as the 1b preset launches it on an H200 (bf16, head_dim 128, the CUDA tile heuristics),
    through Triton's whole pipeline down to a cubin for sm_90 — no GPU needed. What the interpreter cannot catch
    (types, constexpr branches, shared-memory limits) fails here. Needs TRITON_INTERPRET=0 in the process."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ops = kernels.triton_kernels()
    assert not ops.interpreted, "run with TRITON_INTERPRET=0"
    cuda, target = torch.device("cuda"), GPUTarget("cuda", 90, 32)
    pointers = ("Q", "K", "V", "OUT", "DO", "DK", "DV", "DQ", "X", "Y", "SHIFT", "SCALE", "GATE", "COS", "SIN")
    types = {name: "*bf16" for name in pointers}
    types |= {name: "*fp32" for name in ("O_PART", "LSE_PART", "LSE", "DELTA")}
    types |= {name: "*i32" for name in ("KIND", "CHUNK", "PARTIAL_COUNT", "PARTIAL_INDEX", "FULL_COUNT", "FULL_INDEX")}
    types |= {"LENS": "*i64", "qk_scale": "fp32", "sm_scale": "fp32", "eps": "fp32"}
    compiled = []

    def build(fn, constants: dict, warps: int, stages: int = 1) -> None:
        signature = {name: "constexpr" if name in constants else types.get(name, "i32") for name in fn.arg_names}
        options = {"num_warps": warps, "num_stages": stages}
        kernel = triton.compile(ASTSource(fn, signature, constexprs=constants), target=target, options=options)
        compiled.append(f"{fn.__name__} {constants}: {kernel.metadata.shared} B shared")

    for rows in (4704, 16):  # a 1b chunk; a short chunk (split-KV)
        block_m, block_n, warps, stages = ops.chunk._blocks(rows, 128, cuda)
        for split in (False, True):
            tiles = {"HEAD_DIM": 128, "BLOCK_M": block_m, "BLOCK_N": block_n, "HAS_LENS": True, "SPLIT": split}
            build(ops.chunk._chunk_attention_kernel, tiles, warps, stages)
    build(ops.chunk._merge_splits_kernel, {"HEAD_DIM": 128, "BLOCK_R": 64}, 4)
    (fm, fn_, fw, fs), (bm, bn, bw, bs) = ops.block_causal._blocks(128, cuda)
    build(ops.block_causal._forward_kernel, {"HEAD_DIM": 128, "BLOCK_M": fm, "BLOCK_N": fn_}, fw, fs)
    build(ops.block_causal._dkdv_kernel, {"HEAD_DIM": 128, "BLOCK_M": bm, "BLOCK_N": bn}, bw, bs)
    build(ops.block_causal._dq_kernel, {"HEAD_DIM": 128, "BLOCK_M": bm, "BLOCK_N": bn}, bw, bs)
    build(ops.norm._modulated_norm_kernel, {"BLOCK_R": 2, "BLOCK_C": 2048}, 8)
    build(ops.residual._gated_residual_kernel, {"BLOCK_R": 2, "BLOCK_C": 1024}, 4)
    build(ops.rope._rope_kernel, {"HALF": 64, "BLOCK_T": 32}, 4)
    return compiled


@pytest.mark.slow
def test_kernels_compile_for_hopper() -> None:
    code = "from tests.test_kernels import compile_for_hopper; print(*compile_for_hopper(), sep='\\n')"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 11


@pytest.mark.slow
def test_streaming_equals_one_pass_on_triton() -> None:
    """The central exactness tests, every op on the Triton kernels (the teacher's arbitrary mask stays reference)."""
    env = {**os.environ, "SONATE_KERNELS": "triton"}
    select = "streaming_equals_one_pass and ring-rolls"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_streaming.py", "-k", select]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout


def test_bench_kernels_smoke(tmp_path: Path) -> None:
    from sonate.streamer.bench.kernels import bench_kernels, kernels_report
    from sonate.streamer.bench.report import write_outputs

    result = bench_kernels(smoke=True)
    assert result["checks"] and all(check["ok"] for check in result["checks"])
    assert result["chunk_attention"] and result["block_causal"] and result["end_to_end"]
    write_outputs(result, kernels_report(result), tmp_path / "kernels.json")
    summary = (tmp_path / "kernels.md").read_text()
    assert f"| {result['checks'][0]['kernel']} |" in summary
    assert json.loads((tmp_path / "kernels.json").read_text())["versions"]["torch"] == torch.__version__
