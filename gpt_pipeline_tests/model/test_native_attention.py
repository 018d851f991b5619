"""NativeAttention (native_attention.py, native/attention.c) against gpt-rs's attention written
head by head (``gpt_pipeline_tests.reference``), and the kernel build (native_build.py)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile

import pytest
import torch

from gpt_pipeline.model import native_build
from gpt_pipeline.model.dropout import dropped_positions
from gpt_pipeline.model.native_attention import NativeAttention

from gpt_pipeline_tests.reference import kept
from gpt_pipeline_tests.reference import heads_from_qkv as _per_head


def _kernel_or_skip(head_size: int) -> None:
    if native_build.kernel("attention", head_size) is None:  # only without a compiler (asserted below)
        pytest.skip(f"no native attention kernel here: {native_build.why_not('attention', head_size)}")


def _mask(heads: int, B: int, T: int, positions: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The ``[H, B, T, T]`` dropout mask that ``positions`` of ``[B, H, T, T]`` stand for."""
    return kept(B * heads * T * T, positions, scale).view(B, heads, T, T).transpose(0, 1)


def test_the_kernel_is_built_wherever_there_is_a_compiler():
    assert (native_build.kernel("attention", 32) is not None) == (native_build.compiler() is not None)
    assert native_build.why_not("attention", 32) is None or native_build.compiler() is None
    assert native_build.why_not("attention", 6) == "head size 6 is not a multiple of 4"


@pytest.mark.parametrize("B, T, heads, hs", [
    (1, 64, 4, 32),  # gpt-rs's example head, 16 floats a vector
    (3, 8, 4, 8),  # 8 floats a vector
    (2, 7, 2, 4),  # 4 floats a vector, T not a multiple of the 4-row tiles
    (2, 1, 2, 16),  # one position
    (2, 19, 3, 12),  # 3 chunks of 4 per head, T past one 16-wide chunk
    (1, 70, 1, 16),  # more keys than one 4-chunk tile (5 chunks)
    (2, 33, 2, 64),  # 4 vectors a head row
])
def test_native_attention_equals_the_per_head_attention_with_dropout(B, T, heads, hs):
    _kernel_or_skip(hs)
    g = torch.Generator().manual_seed(T)
    qkv = torch.randn(B, T, 3 * heads * hs, generator=g)
    positions = dropped_positions(B * heads * T * T, 0.2, g)
    scale = 1 / 0.8
    grad = torch.randn(B, T, heads * hs, generator=g)
    native_in, plain_in = qkv.clone().requires_grad_(True), qkv.clone().requires_grad_(True)
    native = NativeAttention.apply(native_in, heads, positions, scale)
    plain = _per_head(plain_in.double(), heads, _mask(heads, B, T, positions, scale).double())
    native.backward(grad)
    plain.backward(grad.double())
    torch.testing.assert_close(native, plain.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native_in.grad, plain_in.grad.float(), rtol=1e-5, atol=1e-5)
    if T > 1:  # the positions matter: one fewer dropped moves the output
        causal = positions % T <= positions // T % T  # on or below the diagonal: weights that count
        fewer = positions[torch.arange(len(positions)) != int(causal.nonzero()[0])]
        other = _per_head(qkv.double(), heads, _mask(heads, B, T, fewer, scale).double())
        assert (other - plain).abs().max() > 1e-3


def test_native_attention_on_random_shapes_and_thread_counts():
    """Every tiling edge at once: 40 random (B, T, heads, head size, dropout, threads)."""
    if native_build.compiler() is None:
        pytest.skip("no C compiler here")
    rng, threads = random.Random(0), torch.get_num_threads()
    try:
        for trial in range(40):
            hs = rng.choice([4, 8, 12, 16, 20, 24, 32, 48, 64])
            B, T, heads, p = rng.randint(1, 3), rng.randint(1, 80), rng.randint(1, 3), rng.choice([0.0, 0.1, 0.5])
            g = torch.Generator().manual_seed(trial)
            qkv, grad = torch.randn(B, T, 3 * heads * hs, generator=g), torch.randn(B, T, heads * hs, generator=g)
            positions = dropped_positions(B * heads * T * T, p, g) if p else None
            torch.set_num_threads(rng.randint(1, 3))
            native_in, plain_in = qkv.clone().requires_grad_(True), qkv.double().requires_grad_(True)
            native = NativeAttention.apply(native_in, heads, positions, 1 / (1 - p))
            plain = _per_head(plain_in, heads, _mask(heads, B, T, positions, 1 / (1 - p)).double())
            native.backward(grad)
            plain.backward(grad.double())
            shape = f"trial {trial}: B={B} T={T} heads={heads} hs={hs} p={p}"
            torch.testing.assert_close(native, plain.float(), rtol=1e-5, atol=1e-5, msg=shape)
            torch.testing.assert_close(native_in.grad, plain_in.grad.float(), rtol=1e-5, atol=1e-5, msg=shape)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("widest", [8, 4])
def test_machines_with_narrower_vectors_get_a_kernel_of_their_width(widest, monkeypatch):
    """An AVX2 (8 floats) or SSE/NEON (4) machine builds gpt-rs's head size 32 with its own
    vector width (16-float vectors there would spill to memory): same results."""
    if native_build.compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(native_build, "vector_floats", lambda: widest)
    assert native_build.vector_length(32) == widest
    g = torch.Generator().manual_seed(widest)
    qkv, grad = torch.randn(2, 21, 3 * 64, generator=g), torch.randn(2, 21, 64, generator=g)
    positions = dropped_positions(2 * 2 * 21 * 21, 0.2, g)
    native_in, plain_in = qkv.clone().requires_grad_(True), qkv.double().requires_grad_(True)
    native = NativeAttention.apply(native_in, 2, positions, 1 / 0.8)
    plain = _per_head(plain_in, 2, _mask(2, 2, 21, positions, 1 / 0.8).double())
    native.backward(grad)
    plain.backward(grad.double())
    torch.testing.assert_close(native, plain.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native_in.grad, plain_in.grad.float(), rtol=1e-5, atol=1e-5)


def test_native_attention_without_dropout_and_with_every_weight_dropped():
    _kernel_or_skip(8)
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 6, 3 * 16, generator=g)
    native_in, plain_in = qkv.clone().requires_grad_(True), qkv.clone().requires_grad_(True)
    out = NativeAttention.apply(native_in, 2, None, 1.0)
    out.sum().backward()
    plain = _per_head(plain_in, 2, None)
    plain.sum().backward()
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(native_in.grad, plain_in.grad, rtol=1e-5, atol=1e-6)
    qkv = qkv.clone().requires_grad_(True)
    out = NativeAttention.apply(qkv, 2, torch.arange(2 * 2 * 6 * 6), 2.0)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, 6, 16))  # no weight left: no output, no gradient
    assert torch.equal(qkv.grad, torch.zeros_like(qkv))


def test_the_softmax_survives_large_scores():
    """Scores of +-1e4 (exp overflows without the row maximum): finite, the largest key wins."""
    _kernel_or_skip(16)
    qkv = torch.zeros(1, 3, 48)
    qkv[0, :, :16] = 100.0  # q
    qkv[0, :, 16:32] = torch.tensor([[-100.0], [100.0], [-100.0]])  # k: key 1 scores 1e4, the others -1e4
    qkv[0, :, 32:] = torch.tensor([[1.0], [2.0], [3.0]])  # v
    out = NativeAttention.apply(qkv, 1, None, 1.0)
    assert out[0, :, 0].tolist() == [1.0, 2.0, 2.0]


def test_the_result_does_not_depend_on_the_thread_count():
    _kernel_or_skip(32)
    g = torch.Generator().manual_seed(0)
    qkv, grad = torch.randn(8, 64, 384, generator=g), torch.randn(8, 64, 128, generator=g)
    positions = dropped_positions(8 * 4 * 64 * 64, 0.1, g)
    results, threads = [], torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            x = qkv.clone().requires_grad_(True)
            out = NativeAttention.apply(x, 4, positions, 1 / 0.9)
            out.backward(grad)
            results.append((out, x.grad))
    finally:
        torch.set_num_threads(threads)
    for out, grad_in in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad_in, results[0][1])


def test_bad_inputs_are_refused_before_the_kernel_reads_them():
    _kernel_or_skip(16)
    with pytest.raises(ValueError, match="flat contiguous int64 tensor, got torch.int32"):
        NativeAttention.apply(torch.zeros(1, 2, 48), 1, torch.tensor([0], dtype=torch.int32), 2.0)
    with pytest.raises(ValueError, match=r"CPU float32 \[B, T, 3 x 2 heads x head size\] tensor, got "
                                         r"torch.float32 \(1, 2, 45\) on cpu"):
        NativeAttention.apply(torch.zeros(1, 2, 45), 2, None, 1.0)
    with pytest.raises(ValueError, match=r"got torch.float64 \(1, 2, 48\)"):
        NativeAttention.apply(torch.zeros(1, 2, 48, dtype=torch.float64), 1, None, 1.0)


def test_a_build_is_cached_on_disk_and_keyed_by_its_source(tmp_path, monkeypatch):
    if native_build.compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("GPT_PIPELINE_KERNEL_CACHE", str(tmp_path))
    lib = native_build.kernel("attention", 8)
    assert lib is not None and lib.attention_head_size() == 8
    built = list(tmp_path.glob(f"attention_HS8_VL{native_build.vector_length(8)}_*.so"))
    assert len(built) == 1 and list(tmp_path.iterdir()) == built  # no temporary file left
    stamp = built[0].stat().st_mtime_ns
    code = ("from gpt_pipeline.model import native_build; "
            "print(native_build.kernel('attention', 8).attention_head_size())")
    env = {**os.environ, "GPT_PIPELINE_KERNEL_CACHE": str(tmp_path)}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "8"
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp  # not rebuilt
    native_build.kernel("attention", 16)
    assert len(list(tmp_path.glob("attention_HS16_VL*.so"))) == 1  # another head size, another file


def test_without_a_working_compiler_the_model_trains_on_the_pytorch_path(tmp_path, monkeypatch):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("GPT_PIPELINE_KERNEL_CACHE", str(tmp_path / "cache"))
    assert native_build.kernel("attention", 8) is None
    assert native_build.why_not("attention", 8) == "cc failed on attention.c: cc: error: this compiler is broken"
    from gpt_pipeline.model.gpt import GPT, GPTConfig

    config = GPTConfig(vocab_size=30, embedding_size=16, context_length=8, head_count=2, block_count=1)
    model = GPT(config).train()
    x = torch.randint(0, 30, (2, 8))
    model.loss(x, x).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    monkeypatch.setenv("GPT_PIPELINE_NATIVE", "0")
    assert native_build.why_not("attention", 8) == "turned off by GPT_PIPELINE_NATIVE=0"



def test_an_unwritable_kernel_cache_means_the_pytorch_path_not_a_crash(tmp_path, monkeypatch):
    if native_build.compiler() is None:
        pytest.skip("no C compiler here")
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("GPT_PIPELINE_KERNEL_CACHE", str(tmp_path / "a_file" / "kernels"))
    assert native_build.kernel("attention", 8) is None
    assert native_build.why_not("attention", 8).startswith(f"cannot build into {tmp_path / 'a_file' / 'kernels'}: ")


def test_a_kernel_folder_that_others_may_write_to_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could plant a library here
    monkeypatch.setenv("GPT_PIPELINE_KERNEL_CACHE", str(shared))
    assert native_build.kernel("attention", 8) is None
    assert native_build.why_not("attention", 8) == (
        f"refusing kernel folder {shared}: owned by another user or writable by others")
    assert list(shared.iterdir()) == []  # nothing built or loaded there


def test_without_a_writable_home_cache_the_kernel_goes_to_a_private_temporary_folder(tmp_path, monkeypatch):
    if native_build.compiler() is None:
        pytest.skip("no C compiler here")
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.delenv("GPT_PIPELINE_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert native_build.kernel("attention", 8) is not None
    folder = tmp_path / "tmp" / f"gpt_pipeline_kernels_{os.getuid()}"
    assert len(list(folder.glob("attention_HS8_VL*.so"))) == 1
    assert folder.stat().st_mode & 0o777 == 0o700
