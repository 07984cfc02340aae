"""BN recalibration against a plain-PyTorch reference, the Pareto buckets and mean pareto accuracy by hand, and the
empty-calibration-set errors."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from deps_core.arch import Arch, uniform_arch
from deps_core.evaluate import (
    ArchResult,
    CachedBatches,
    ResultLog,
    bucket_archs,
    calibrate_bn,
    data_digest,
    eval_archs,
    evaluate,
    evaluate_archs,
    format_pareto_table,
    load_results,
    mean_pareto_accuracy,
    pareto_buckets,
    pareto_report,
    save_results,
    weights_digest,
)
from deps_core.export import build_static, extract_subnet, subnet_config
from deps_core.spaces import create_supernet


@pytest.fixture(scope="module")
def net64():
    """A tiny float64 supernet with random affine weights and random (non-default) BN statistics."""
    g = torch.Generator().manual_seed(3)
    net = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25, generator=g).double()
    with torch.no_grad():
        for name, t in net.named_parameters():
            if name.endswith(("bn.weight", "bn.bias")):
                t.copy_(0.5 + torch.rand(t.shape, generator=g, dtype=t.dtype))
        for name, t in net.named_buffers():
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g, dtype=t.dtype))
    return net


def test_calibration_equals_cumulative_bn_of_the_static_subnet_and_leaves_other_channels_alone(net64):
    g = torch.Generator().manual_seed(4)
    arch = uniform_arch(net64.spec, g)
    assert arch != net64.max_arch() and min(arch.d) < 4  # some channels and some blocks are inactive
    batches = [(torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64), torch.zeros(6)) for _ in range(3)]

    # reference: the static subnet in train mode, torch BN with momentum=None (a cumulative average) from reset stats
    ref = build_static(subnet_config(net64, arch)).double()
    ref.load_state_dict(extract_subnet(net64, arch).state_dict())
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    ref.train()
    with torch.no_grad():
        for x, _ in batches:
            ref(x)

    before = {k: v.clone() for k, v in net64.named_buffers()}
    calibrate_bn(net64, arch, CachedBatches(batches))
    got = extract_subnet(net64, arch).state_dict()
    stats = [k for k in got if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 20
    for k in stats:
        torch.testing.assert_close(got[k], ref.state_dict()[k], rtol=1e-10, atol=1e-12, msg=k)

    # every entry outside the arch's active slices keeps its exact value
    active = net64.buffer_slices(arch)
    for name, after in net64.named_buffers():
        if not name.endswith(("running_mean", "running_var")):
            continue
        untouched = torch.ones_like(after, dtype=torch.bool)
        if name in active:
            untouched[active[name] or slice(None)] = False
        assert torch.equal(after[untouched], before[name][untouched]), name
        if name in active:
            assert not torch.equal(after[~untouched], before[name][~untouched]), name  # and the active ones moved
    with torch.no_grad():  # put the module-scoped fixture back
        for k, v in net64.named_buffers():
            v.copy_(before[k])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_calibration_and_evaluation_on_cuda_agree_with_float64_on_the_cpu(net64):
    import copy

    g = torch.Generator().manual_seed(5)
    arch = uniform_arch(net64.spec, g)
    calib = [(torch.randn(32, 3, 32, 32, generator=g, dtype=torch.float64), torch.zeros(32)) for _ in range(2)]
    images = torch.randn(64, 3, 32, 32, generator=g, dtype=torch.float64)
    ref = copy.deepcopy(net64)
    calibrate_bn(ref, arch, CachedBatches(calib))
    ref.eval()
    with torch.no_grad():
        labels = ref(images, arch).argmax(1)  # the float64 model's predictions: its top-1 is 1 by construction
    gpu = copy.deepcopy(net64).float().cuda()
    calibrate_bn(gpu, arch, CachedBatches([(x.float().cuda(), y) for x, y in calib]), amp=True)
    for (name, a), (_, b) in zip(ref.named_buffers(), gpu.named_buffers()):
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(b.double().cpu(), a, rtol=5e-2, atol=5e-2, msg=name)  # bf16 activations
    r = evaluate(gpu, arch, [(images.float().cuda(), labels.cuda())], amp=True)
    assert r["top1"] >= 0.9 and r["top5"] >= r["top1"]


def test_empty_calibration_sets_are_clear_errors(net64):
    with pytest.raises(ValueError, match="empty calibration/evaluation set: it needs at least one batch"):
        CachedBatches([])
    with pytest.raises(ValueError, match="empty calibration/evaluation set: the loader yielded no images"):
        CachedBatches.from_loader(iter([]))
    with pytest.raises(ValueError, match="empty calibration set"):
        calibrate_bn(net64, net64.min_arch(), [])


# --- Pareto --------------------------------------------------------------------------------------------------------


def test_mean_pareto_accuracy_is_the_trapezoid_area_held_flat_to_both_ends():
    # MAC range [100, 300]: the points sit at x = 0.25, 0.5, 0.75 (given out of order)
    points = [(200, 0.6), (150, 0.5), (250, 0.7)]
    by_hand = (
        0.25 * 0.5  # [0, 0.25]: flat at the first point's accuracy
        + 0.25 * (0.5 + 0.6) / 2  # trapezoids between the points
        + 0.25 * (0.6 + 0.7) / 2
        + 0.25 * 0.7  # [0.75, 1]: flat at the last point's accuracy
    )
    assert mean_pareto_accuracy(points, 100, 300) == pytest.approx(by_hand, abs=1e-12)
    assert by_hand == pytest.approx(0.6)
    # endpoints on the range's ends: no flat parts; one point: its accuracy everywhere
    assert mean_pareto_accuracy([(100, 0.2), (300, 0.8)], 100, 300) == pytest.approx(0.5)
    assert mean_pareto_accuracy([(180, 0.42)], 100, 300) == pytest.approx(0.42)
    with pytest.raises(ValueError, match="at least one point"):
        mean_pareto_accuracy([], 100, 300)
    with pytest.raises(ValueError, match="outside the MAC range"):
        mean_pareto_accuracy([(400, 0.5)], 100, 300)


def test_pareto_buckets_keep_the_best_of_each_equal_mac_interval():
    arch = Arch.from_ofa([3] * 20, [3] * 20, [2] * 5, space="ofa_mbv3_32")
    results = [
        ArchResult(arch, 100, 0.1),  # bucket 0: [100, 150)
        ArchResult(arch, 149, 0.3),
        ArchResult(arch, 150, 0.2),  # bucket 1: [150, 200)
        ArchResult(arch, 300, 0.9),  # the last bucket is closed: 300 is in bucket 3
        ArchResult(arch, 260, 0.95),
    ]
    buckets = pareto_buckets(results, 100, 300, n_buckets=4)
    assert [(b["bucket"], b["lo"], b["hi"], b["best"].macs) for b in buckets] == [
        (0, 100, 150, 149),
        (1, 150, 200, 150),
        (3, 250, 300, 260),
    ]


def test_the_pareto_table_prints_each_best_subnet_inside_its_printed_range():
    """The bucket range and the subnet's MACs share one precision, so a subnet at the range's edge (the min subnet at
    4,450,560 MACs opens bucket 1) never reads as outside it ("4.5-7.5" next to "4.45" did)."""
    net = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25)
    g = torch.Generator().manual_seed(5)
    archs = [net.min_arch(), net.max_arch()] + [uniform_arch(net.spec, g) for _ in range(30)]
    results = [ArchResult(a, net.macs(a), 0.5, 0.9) for a in archs]
    table = format_pareto_table(pareto_report(net, results))
    rows = [line.split() for line in table.splitlines()[2:] if line.split()[0].isdigit()]
    assert len(rows) >= 3
    for _bucket, span, macs, *_ in rows:
        lo, hi = map(float, span.split("-"))
        assert lo <= float(macs) <= hi, f"{macs} printed outside {span}"


@pytest.mark.parametrize("space", ["ofa_mbv3_w1.0", "ofa_proxyless_w1.3"])
def test_bucket_sampler_fills_every_mac_bucket_where_uniform_sampling_leaves_the_top_empty(space):
    net = create_supernet(space, num_classes=10)
    lo, hi = net.macs(net.min_arch()), net.macs(net.max_arch())

    def bucket_counts(archs):
        counts = [0] * 6
        for a in archs:
            counts[min(int((net.macs(a) - lo) / ((hi - lo) / 6)), 5)] += 1
        return counts

    archs = bucket_archs(net, torch.Generator().manual_seed(0), 26)
    assert archs[:2] == [net.max_arch(), net.min_arch()] and len(set(archs)) == len(archs) == 28
    assert bucket_counts(archs[2:]) == [5, 5, 4, 4, 4, 4]  # n // 6 each, one more for the first n % 6
    for a in archs:
        net.spec.check(a)
    assert archs == bucket_archs(net, torch.Generator().manual_seed(0), 26)
    assert archs != bucket_archs(net, torch.Generator().manual_seed(1), 26)
    # why: 200 uniform subnets besides max and min leave at least one bucket without a candidate
    uniform = eval_archs(net, torch.Generator().manual_seed(0), 200, sampler="uniform")
    assert 0 in bucket_counts(uniform[2:])
    assert eval_archs(net, torch.Generator().manual_seed(0), 26) == archs


def test_bucket_sampler_keeps_what_it_found_when_draws_run_out_and_rejects_bad_counts():
    net = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25)
    archs = bucket_archs(net, torch.Generator().manual_seed(0), 60, max_draws=20)
    assert 2 < len(archs) <= 22 and len(set(archs)) == len(archs)
    assert bucket_archs(net, torch.Generator().manual_seed(0), 0) == [net.max_arch(), net.min_arch()]
    with pytest.raises(ValueError, match="need n >= 0 and n_buckets >= 1"):
        bucket_archs(net, torch.Generator(), 4, n_buckets=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        eval_archs(net, torch.Generator(), 4, sampler="random")


def test_saved_results_load_back_and_bad_files_are_named(tmp_path):
    spec = create_supernet("ofa_mbv3_32", num_classes=3).spec
    g = torch.Generator().manual_seed(1)
    results = [ArchResult(uniform_arch(spec, g), 1000 + i, 0.1 * i, 0.5, 2.0 - i) for i in range(3)]
    save_results(results, tmp_path / "subnets.json")
    assert load_results(tmp_path / "subnets.json") == results
    for text, message in [
        (None, "no such file"),
        (b"\xff\xfe", "is not a JSON file"),
        (b"[1, 2]", "is not a list of subnet results as subnets.json holds"),
        (b'[{"arch": 1}]', "is not a list of subnet results as subnets.json holds"),
    ]:
        path = tmp_path / "bad.json"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_bytes(text)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}.*{message}"):
            load_results(path)


def test_evaluate_archs_keeps_each_result_as_it_comes_and_reuses_those_of_the_same_setup(net64, tmp_path, monkeypatch):
    import deps_core.evaluate as E

    g = torch.Generator().manual_seed(5)
    archs = [net64.max_arch(), *(uniform_arch(net64.spec, g) for _ in range(3)), net64.min_arch()]
    calib = CachedBatches([(torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.zeros(8).long())])
    val = [(torch.randn(12, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(10, (12,), generator=g))]
    expected = evaluate_archs(net64, archs, calib, val, progress=False)
    setup = {"weights_sha256": weights_digest(net64), "val": 12}
    calls, real = [], E.evaluate

    def stops_at_the_fourth(net, arch, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(arch)
        return real(net, arch, *args, **kwargs)

    monkeypatch.setattr(E, "evaluate", stops_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        evaluate_archs(net64, archs, calib, val, progress=False, log=ResultLog(tmp_path, setup, "subnets"))
    calls.clear()
    monkeypatch.setattr(E, "evaluate", lambda net, arch, *a, **k: calls.append(arch) or real(net, arch, *a, **k))
    again = evaluate_archs(net64, archs, calib, val, progress=False, log=ResultLog(tmp_path, setup, "subnets"))
    assert again == expected and calls == archs[3:]  # the same results, bit for bit; the last two evaluated anew
    assert len(list(tmp_path.glob("subnets-*.jsonl"))) == 1

    # the digest follows the weights, not where they are or how they were saved
    twin = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25).double()
    twin.load_state_dict(net64.state_dict())
    assert weights_digest(twin) == weights_digest(net64)
    with torch.no_grad():
        next(twin.parameters()).view(-1)[0] += 1e-12
    assert weights_digest(twin) != weights_digest(net64)


def test_the_data_digest_follows_what_a_file_or_folder_holds_not_where_it_lies(tmp_path):
    import deps_core.evaluate as E

    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 256, (E.DIGEST_CHUNKS * 2**20 + 12345,), generator=g, dtype=torch.uint8).numpy().tobytes()
    small = big[:1000]
    (tmp_path / "a").mkdir()
    for name, data in (("big.beton", big), ("small.beton", small)):
        (tmp_path / "a" / name).write_bytes(data)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same data elsewhere (a node's scratch, a moved dataset)
    for name in ("big.beton", "small.beton"):
        assert data_digest(tmp_path / "a" / name) == data_digest(str(tmp_path / "b" / name))
    assert data_digest(tmp_path / "a") == data_digest(tmp_path / "b")
    assert len({data_digest(tmp_path / "a" / n) for n in ("big.beton", "small.beton")}) == 2

    def changed(name: str, at: int) -> str:
        data = bytearray((tmp_path / "a" / name).read_bytes())
        data[at] ^= 1
        (tmp_path / "b" / name).write_bytes(data)
        return data_digest(tmp_path / "b" / name)

    same = data_digest(tmp_path / "a" / "big.beton")
    # a large file: its size and its first, last and evenly spread MiBs (a beton's header and tables among them)
    assert changed("big.beton", 0) != same and changed("big.beton", len(big) - 1) != same
    assert changed("big.beton", (len(big) - 2**20) // (E.DIGEST_CHUNKS - 1) * 7 + 5) != same
    (tmp_path / "b" / "big.beton").write_bytes(big + b"\0")
    assert data_digest(tmp_path / "b" / "big.beton") != same
    assert changed("small.beton", 999) != data_digest(tmp_path / "a" / "small.beton")  # a small file: every byte
    # a folder (ImageFolder): each file's relative path and size, not its bytes
    shutil.rmtree(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    changed("small.beton", 0)
    assert data_digest(tmp_path / "a") == data_digest(tmp_path / "b")
    (tmp_path / "b" / "small.beton").rename(tmp_path / "b" / "other.beton")
    assert data_digest(tmp_path / "a") != data_digest(tmp_path / "b")
    with pytest.raises(ValueError, match="no such data file or folder"):
        data_digest(tmp_path / "missing.beton")
