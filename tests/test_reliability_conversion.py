"""The converter under bad conditions: readable outputs, every bad mask caught, file-system errors as messages, no
orphans after a kill, all problems in one run, read warnings as one line per file, -np capped."""

import errno
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import nnunetv2.dataset_conversion.generate_dataset_json as nnunet_generate_dataset_json

import dataset_conversion.cli as cli
import dataset_conversion.writer as writer
from dataset_conversion.cli import main
from dataset_conversion.errors import MAX_PROBLEMS_SHOWN, ConversionError
from dataset_conversion.masks import binarize_binary_mask
from dataset_conversion.reading import read_mask_array
from nnunet_allukan.synthetic import make_synthetic_busi, make_synthetic_cvc
from nnunet_allukan.filesystem import try_lock

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture
def cvc_tif(tmp_path) -> Path:
    return make_synthetic_cvc(tmp_path / "cvc_tif", n_cases=4, image_format="tif", seed=4)


def leftovers(raw_folder: Path) -> list[str]:
    return sorted(p.name for p in raw_folder.iterdir()) if raw_folder.is_dir() else []


def fails(capsys, argv: list[str], *fragments: str) -> str:
    rc = main(argv + ["-np", "1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"
    assert "Nothing was written." in err
    return err


def converter_process(argv: list[str], env_extra: dict, **kwargs) -> subprocess.Popen:
    """The converter of this working tree (not an installed copy) as its own process."""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), **env_extra}
    env.pop("nnUNet_preprocessed", None)
    env.pop("nnUNet_results", None)
    return subprocess.Popen([sys.executable, "-m", "dataset_conversion.cli", *argv], cwd=REPOSITORY, env=env,
                            **kwargs)


# --- 1. outputs readable as the umask says ---------------------------------------------------------------


@pytest.mark.parametrize("mask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_dataset_modes_follow_the_umask(raw, busi, mask, folder_mode, file_mode):
    previous = os.umask(mask)
    try:
        assert main(["busi", str(busi), "--size", "32", "-np", "1"]) == 0
    finally:
        os.umask(previous)
    dataset = raw / "Dataset601_BUSI"
    for folder in (dataset, dataset / "imagesTr", dataset / "labelsTr"):
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode, folder
    for file in (dataset / "dataset.json", dataset / "paper_splits.json", dataset / "labelsTr" / "benign_0001.png",
                 dataset / "thresholded_masks.csv"):
        assert stat.S_IMODE(file.stat().st_mode) == file_mode, file


# --- 2. masks: soft edges accepted, everything else refused with the reason ------------------------------


def disc(size: int = 64, radius: float = 14.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - size / 2, xx - size / 2) < radius


def test_soft_anti_aliased_edges_are_thresholded():
    yy, xx = np.mgrid[:64, :64]
    distance = np.hypot(yy - 32, xx - 32) - 14.0  # signed distance to a circle, in pixels
    mask = np.clip(np.round((0.5 - distance / 2) * 255), 0, 255).astype(np.uint8)  # 2-pixel ramp
    reading = binarize_binary_mask(mask, Path("soft.png"))
    assert reading.kind == "soft" and reading.edge_pixels > 0
    np.testing.assert_array_equal(reading.foreground, mask >= 128)


def test_real_soft_masks_pass(shared_dir):
    for path in sorted((shared_dir / "samples" / "CVC-ClinicDB" / "Ground Truth").glob("*.tif")):
        reading = binarize_binary_mask(read_mask_array(path), path)
        assert reading.kind == "soft" and reading.faint_pixels > 0, path  # the faint halo is kept as noise


def label_map_0_1_2_255() -> np.ndarray:
    mask = disc().astype(np.uint8) * 255
    mask[2:12, 2:20] = 1
    mask[50:62, 40:60] = 2
    return mask


def stepped_gradient() -> np.ndarray:
    return np.repeat(np.repeat(np.arange(8, dtype=np.uint8) * 36, 8)[None, :], 64, axis=0)


def test_label_map_holding_255_is_thresholded_and_said():
    reading = binarize_binary_mask(label_map_0_1_2_255(), Path("labels.png"))
    assert reading.kind == "soft" and reading.large_dropped_level  # 240 pixels of 2: 5.9 % of 64 x 64
    assert (reading.dropped_level, reading.dropped_level_pixels) == (2, 240)
    np.testing.assert_array_equal(reading.foreground, disc())


@pytest.mark.parametrize("make_mask, fragments", [
    (lambda: np.minimum(label_map_0_1_2_255(), 3), ("[0, 1, 2, 3]", "multi-class label map", "would drop")),
    (stepped_gradient, ("does not look like a mask", "75 % of its pixels lie between", "gradient")),
    (lambda: np.full((64, 64), 255, np.uint8), ("marks every pixel as object", "[255]")),
    (lambda: np.full((64, 64), 1, np.uint8), ("marks every pixel as object",)),
])
def test_non_binary_masks_are_refused(make_mask, fragments):
    with pytest.raises(ConversionError) as error:
        binarize_binary_mask(make_mask(), Path("bad_mask.png"))
    for fragment in fragments:
        assert fragment in str(error.value)
    assert "bad_mask.png" in str(error.value)


def test_label_maps_by_the_command(raw, busi, capsys):
    image = busi / "benign" / "benign (1).png"
    Image.open(image).resize((64, 64)).save(image)
    Image.fromarray(np.minimum(label_map_0_1_2_255(), 3)).save(busi / "benign" / "benign (1)_mask.png")
    fails(capsys, ["busi", str(busi)], "benign (1)_mask.png has the values [0, 1, 2, 3]", "label map")
    assert leftovers(raw) == []
    # with 255 it is binary in intent: thresholded, the dropped labels said
    Image.fromarray(label_map_0_1_2_255()).save(busi / "benign" / "benign (1)_mask.png")
    assert main(["busi", str(busi), "-np", "1"]) == 0
    err = capsys.readouterr().err
    assert "Warning: 1 masks hold a level below 128 on more than 1 % of the image" in err
    assert "  benign/benign (1)_mask.png: the level 2 on 240 pixels (5.86 %)" in err


@pytest.mark.parametrize("remove, fragments", [
    ("benign (2)_mask.png", ("benign (2).png has the masks ['benign (2)_mask_1.png'] but not benign (2)_mask.png",)),
    ("benign (3)_mask_1.png", ("but not benign (3)_mask_1.png",)),  # a gap: _mask, _mask_2
])
def test_missing_lesion_mask_refused(raw, busi, capsys, remove, fragments):
    (busi / "benign" / remove).unlink()
    fails(capsys, ["busi", str(busi)], *fragments, "would be lost")
    assert leftovers(raw) == []


def test_summary_reports_what_was_done_to_masks(raw, busi, cvc_tif, capsys):
    assert main(["busi", str(busi), "--size", "32", "-np", "1"]) == 0
    out = capsys.readouterr().out
    # BUSI's 0/255 masks are binary, not "thresholded"
    assert "Masks: 9 read: 9 binary (two values), 0 empty, 0 soft-edged" in out
    assert main(["cvc", str(cvc_tif), "--size", "32", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "Masks: 4 read: 2 binary (two values), 0 empty, 2 soft-edged" in out


# --- 3. file-system errors: a message naming the path and the fix, nothing written -----------------------


def test_nnunet_raw_is_a_file(tmp_path, busi, monkeypatch, capsys):
    not_a_folder = tmp_path / "raw_file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("nnUNet_raw", str(not_a_folder))
    fails(capsys, ["busi", str(busi)], f"nnUNet_raw folder {not_a_folder} is a file", "point nnUNet_raw to a folder")
    assert not_a_folder.read_text() == "x"


def test_read_only_nnunet_raw(raw, busi, monkeypatch, capsys):
    raw.mkdir()
    real_mkdir = os.mkdir

    def refusing_mkdir(path, *args, **kwargs):  # what a read-only folder does (tests may run as root)
        if Path(path).parent == raw:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refusing_mkdir)
    fails(capsys, ["busi", str(busi)], "cannot write", "Permission denied", f"Make {raw} writable")
    assert leftovers(raw) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_nnunet_raw_for_real(raw, busi, capsys):
    raw.mkdir()
    raw.chmod(0o555)
    try:
        fails(capsys, ["busi", str(busi)], "cannot write", "Permission denied", f"Make {raw} writable")
    finally:
        raw.chmod(0o755)
    assert leftovers(raw) == []


def test_full_disk(raw, busi, monkeypatch, capsys):
    real_save = Image.Image.save
    saved = []

    def save_until_full(self, fp, *args, **kwargs):
        if len(saved) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_full)
    fails(capsys, ["busi", str(busi)], "No space left on device", "Free space on that file system")
    assert leftovers(raw) == []


def test_full_disk_while_writing_the_json(raw, busi, monkeypatch, capsys):
    def full(data, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    # dataset.json is written by nnU-Net's generate_dataset_json, through batchgenerators' save_json
    monkeypatch.setattr(nnunet_generate_dataset_json, "save_json", full)
    fails(capsys, ["busi", str(busi), "--size", "32"], "dataset.json: No space left on device")
    assert leftovers(raw) == []


# --- 4. a killed conversion: workers die with it, a re-run cleans up -------------------------------------


def child_processes(pid: int) -> dict[int, str]:
    """Live (non-zombie) children of ``pid``: {pid: command line}."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                children[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return children


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_leaves_no_orphans_and_rerun_cleans_up(tmp_path, capsys, monkeypatch):
    source = make_synthetic_busi(tmp_path / "big", n_benign=60, n_malignant=0, n_normal=0, sizes=((320, 240),))
    raw_folder = tmp_path / "raw"
    process = converter_process(["busi", str(source), "--native", "-np", "2"], {"nnUNet_raw": str(raw_folder)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: dict[int, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        children = child_processes(process.pid)
        workers = {p: c for p, c in children.items() if "spawn_main" in c}
        if len(workers) == 2 and list(raw_folder.glob(".tmp_*/labelsTr/*.png")):
            break
        time.sleep(0.02)
    assert len(workers) == 2 and process.poll() is None, "the conversion did not reach its workers in time"
    helpers = child_processes(process.pid)  # workers and multiprocessing's resource tracker
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in helpers):
        time.sleep(0.1)
    assert not [c for p, c in helpers.items() if alive(p)], "processes outlived the killed converter"
    stale = [p.name for p in raw_folder.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".tmp_Dataset601_BUSI_")
    # the re-run removes (and names) the stale temporary folder
    monkeypatch.setenv("nnUNet_raw", str(raw_folder))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    assert main(["busi", str(source), "--size", "32", "-np", "1"]) == 0
    assert f"Removed {raw_folder / stale[0]}, left behind by an interrupted conversion" in capsys.readouterr().out
    assert leftovers(raw_folder) == ["Dataset601_BUSI"]


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on this platform")
def test_temporary_folder_of_a_running_conversion_is_left_alone(raw, busi, capsys):
    running = raw / ".tmp_Dataset601_BUSI_1234abcd"
    (running / "labelsTr").mkdir(parents=True)
    lock = try_lock(running)  # as the running conversion holds it
    try:
        fails(capsys, ["busi", str(busi)], f"{running} is being written by another conversion", "wait for it")
    finally:
        os.close(lock)
    assert running.is_dir()


def test_dataset_moved_aside_by_a_killed_overwrite_is_restored(raw, busi, capsys):
    assert main(["busi", str(busi), "--size", "32", "-np", "1"]) == 0
    aside = raw / ".old_Dataset601_BUSI_0badf00d"
    os.rename(raw / "Dataset601_BUSI", aside)  # killed between the two renames of --overwrite
    capsys.readouterr()
    fails(capsys, ["busi", str(busi), "--size", "48"], "Dataset601_BUSI already exists")
    assert leftovers(raw) == ["Dataset601_BUSI"]
    assert Image.open(raw / "Dataset601_BUSI" / "labelsTr" / "benign_0001.png").size == (32, 32)


# --- 5. every problem in one run -----------------------------------------------------------------------


def test_all_problems_reported_in_one_run(raw, busi, capsys):
    (busi / "benign" / "benign (1)_mask.png").unlink()  # pairing
    (busi / "benign" / "benign (2).png").write_bytes(b"not a png")  # unreadable image
    Image.fromarray(np.full((40, 50), 255, np.uint8)).save(busi / "malignant" / "malignant (1)_mask.png")  # size
    mask_path = busi / "malignant" / "malignant (2)_mask_1.png"
    Image.fromarray(np.full(Image.open(mask_path).size[::-1], 255, np.uint8)).save(mask_path)  # whole frame
    err = fails(capsys, ["busi", str(busi)], "4 problems in the source data", "benign (1).png has no mask",
                "cannot read", "benign (2).png", "malignant (1)_mask.png is 50x40",
                "malignant (2)_mask_1.png marks every pixel as object")
    assert err.count("\n  - ") == 4
    assert leftovers(raw) == []


def test_long_problem_lists_are_capped(raw, tmp_path, capsys):
    source = make_synthetic_busi(tmp_path / "many", n_benign=25, n_malignant=1, n_normal=0, sizes=((40, 30),))
    for number in range(1, 26):
        (source / "benign" / f"benign ({number})_mask.png").unlink()
    err = fails(capsys, ["busi", str(source)], "25 problems", "... and 5 more problems")
    assert err.count("\n  - ") == MAX_PROBLEMS_SHOWN
    assert leftovers(raw) == []


# --- 7. read warnings, -np, SIGTERM ----------------------------------------------------------------------


def corrupt_description_tag(path: Path) -> None:
    """Rewrite ``path`` as a TIFF whose ImageDescription points past the end of the file: Pillow warns
    'Truncated File Read' and gives up, tifffile logs 'invalid value offset' and reads the pixels."""
    tifffile.imwrite(path, tifffile.imread(path), photometric="minisblack", metadata=None,
                     extratags=[(270, "s", 0, "x" * 40, True)])
    data = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 270:
            data[entry + 8:entry + 12] = struct.pack("<I", len(data) - 10)
    path.write_bytes(bytes(data))


def test_read_warnings_become_one_line_per_file(tmp_path, cvc_tif):
    corrupt_description_tag(cvc_tif / "Ground Truth" / "2.tif")
    done = subprocess.run([sys.executable, "-m", "dataset_conversion.cli", "cvc", str(cvc_tif), "--size", "32",
                           "-np", "1"], cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY), "nnUNet_raw": str(tmp_path / "raw")})
    assert done.returncode == 0, done.stderr
    assert "Warning: 1 files were read with warnings" in done.stderr
    # Pillow's warning and tifffile's log message, both on the one line naming the file
    for message in ("invalid value offset", "Truncated File Read"):
        lines = [line for line in done.stderr.splitlines() if message in line]
        assert len(lines) == 1 and lines[0].startswith("  Ground Truth/2.tif: "), done.stderr
    assert "UserWarning" not in done.stderr


def test_process_count_capped_at_the_cpus(raw, busi, monkeypatch, capsys):
    used = []
    real_run_jobs = writer.run_jobs
    monkeypatch.setattr(cli, "available_cpus", lambda: 1)
    monkeypatch.setattr(writer, "run_jobs", lambda jobs, n: used.append(n) or real_run_jobs(jobs, n))
    assert main(["busi", str(busi), "--size", "32", "-np", "64"]) == 0
    assert "-np 64 capped at 1, the number of CPUs available" in capsys.readouterr().out
    assert used == [1]


def test_sigterm_prints_a_message(tmp_path):
    source = make_synthetic_busi(tmp_path / "big", n_benign=40, n_malignant=0, n_normal=0, sizes=((320, 240),))
    raw_folder = tmp_path / "raw"
    process = converter_process(["busi", str(source), "--native", "-np", "1"], {"nnUNet_raw": str(raw_folder)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not list(raw_folder.glob(".tmp_*/labelsTr/*")):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Terminated (SIGTERM); nothing was written." in err
    assert leftovers(raw_folder) == []
