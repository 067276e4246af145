"""Shipping rotated prediction log files: names, and the bound on what waits."""

from __future__ import annotations

from kubeloop.serving.logship import Shipper, pending_name, remote_name


def test_a_waiting_file_goes_under_the_pods_folder_by_its_time():
    waiting = pending_name("/var/log/p/demo-abc.jsonl", 1_700_000_000_123_456_789)
    assert waiting == "/var/log/p/demo-abc.jsonl.1700000000123456789.jsonl"
    assert remote_name("s3://b/logs/", "demo-abc", waiting) == (
        "s3://b/logs/demo-abc/1700000000123456789.jsonl"
    )


def test_files_ship_oldest_first_and_at_most_keep_wait(tmp_path):
    target = tmp_path / "p.jsonl"
    store = tmp_path / "store"
    dropped: list[int] = []
    shipper = Shipper(str(target), store.as_uri(), "pod-1", keep=2, on_dropped=dropped.append)
    for n in range(4):
        target.write_text(f"line {n}\nline {n}b\n")
        shipper.rotated(str(target))
    assert len(shipper.pending()) == 2  # the two oldest were dropped, their lines counted
    assert dropped == [2, 2]
    assert shipper.ship() == 0
    shipped = sorted((store / "pod-1").iterdir())
    assert [p.read_text().split()[1] for p in shipped] == ["2", "3"]
