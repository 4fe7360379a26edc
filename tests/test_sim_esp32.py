"""The simulated flash behaves like esp32.Partition and the ESP-IDF bootloader (the board
port's esp32 module, C as on a board: firmware/board/_board/hw.c).

Each "power-on" is a fresh Unix-port process in the board folder, as with a real reset: the
bootloader step (esp32._power_on) runs first, then the snippet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobsctl import image

SLOT = 0x40000  # small slots keep the files small; the code does not care


@pytest.fixture()
def board(tmp_path: Path) -> Path:
    image.init_sim_flash(tmp_path, version="1.0.0", partition_size=SLOT)
    return tmp_path


@pytest.fixture()
def power_on(micropython, board):
    def run(code: str = "") -> str:
        prog = "import esp32\nesp32._power_on()\n" + code
        return micropython(prog, cwd=board).check().out

    return run


def otadata(board: Path) -> dict:
    return json.loads((board / "flash" / "otadata.json").read_text())


WRITE = """
from iotjobs.board import app_version
p = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
data = open({path!r}, "rb").read()
buf = bytearray(4096)
for i in range(0, len(data), 4096):
    chunk = data[i:i + 4096]
    buf[:len(chunk)] = chunk
    for j in range(len(chunk), 4096):
        buf[j] = 0xFF
    p.writeblocks(i // 4096, buf)
try:
    p.set_boot()
    print("set_boot ok", p.info()[4], app_version(p))
except OSError as e:
    print("refused", e.args[0])
"""


def write_image(power_on, board: Path, data: bytes) -> str:
    path = board / "new.bin"
    path.write_bytes(data)
    return power_on(WRITE.format(path=str(path))).strip()


def test_partitions_report_labels_sizes_and_the_running_version(power_on):
    out = power_on(
        "from iotjobs.board import app_version\n"
        "r = esp32.Partition(esp32.Partition.RUNNING)\n"
        "print(r.info()[4], r.get_next_update().info()[4], r.info()[3], app_version(r),"
        " r.ioctl(4), r.ioctl(5), len(esp32.Partition.find(esp32.Partition.TYPE_APP)))"
    )
    assert out.split() == ["ota_0", "ota_1", str(SLOT), "1.0.0", str(SLOT // 4096), "4096", "2"]


def test_writeblocks_erases_whole_blocks_and_offset_writes_only_clear_bits(power_on):
    # As the firmware's (ports/esp32/esp32_partition.c): writeblocks(block, buf) erases, and
    # ESP-IDF's erase takes whole blocks only (ESP_ERR_INVALID_SIZE, -260, for a part of one);
    # with an offset it programs without erasing.
    out = power_on(
        "p = esp32.Partition('ota_1')\n"
        "p.writeblocks(1, b'\\x0f' * 100 + b'\\x00' * 3996)\n"
        "p.writeblocks(1, b'\\x0f' * 100 + b'\\xff' * 3996)\n"
        "b = bytearray(4096); p.readblocks(1, b)\n"
        "print(b[99], b[100], b[4095])\n"
        "p.writeblocks(1, b'\\xf0\\xff', 99)\n"  # no erase: old & new
        "p.readblocks(1, b)\n"
        "print(b[98], b[99], b[100])\n"
        "try:\n p.writeblocks(p.ioctl(4), b'x' * 4096)\n"
        "except OSError as e:\n print('EINVAL', e.args[0])\n"
        "try:\n p.writeblocks(1, b'\\x0f' * 100)\n"
        "except OSError as e:\n print('PART', e.args[0])\n"
    )
    assert out.split() == ["15", "255", "255", "15", "0", "255", "EINVAL", "22", "PART", "-260"]


def test_set_boot_refuses_what_esp_idf_would_refuse(power_on, board):
    good = image.build_app_image("2.0.0", size=20000)
    assert write_image(power_on, board, b"\x00" * 5000) == "refused -5379"
    bad_checksum = bytearray(good)
    bad_checksum[5000] ^= 1
    assert write_image(power_on, board, bytes(bad_checksum)) == "refused -5379"
    bad_hash = bytearray(good)
    bad_hash[-1] ^= 1
    assert write_image(power_on, board, bytes(bad_hash)) == "refused -5379"
    assert write_image(power_on, board, good[:-100]) == "refused -5379"
    assert otadata(board)["boot"] == "ota_0"
    assert write_image(power_on, board, good) == "set_boot ok ota_1 2.0.0"
    assert otadata(board)["state"]["ota_1"] == "NEW"


def test_unconfirmed_new_image_rolls_back_at_the_next_reset(power_on, board):
    write_image(power_on, board, image.build_app_image("2.0.0", size=20000))
    running = "from iotjobs.board import Board\nprint(Board().firmware_version())"
    assert power_on(running).strip() == "2.0.0"  # booted once, pending verify
    assert otadata(board)["state"]["ota_1"] == "PENDING_VERIFY"
    assert power_on(running).strip() == "1.0.0"  # not confirmed: the bootloader went back
    assert otadata(board)["state"]["ota_1"] == "ABORTED"


def test_confirmed_image_stays(power_on, board):
    write_image(power_on, board, image.build_app_image("2.0.0", size=20000))
    power_on("esp32.Partition.mark_app_valid_cancel_rollback()")
    running = "from iotjobs.board import Board\nprint(Board().firmware_version())"
    assert power_on(running).strip() == "2.0.0"
    assert otadata(board)["state"] == {"ota_0": "VALID", "ota_1": "VALID"}


def test_writing_into_a_slot_makes_its_old_image_unbootable(power_on, board):
    path = board / "new.bin"
    path.write_bytes(image.build_app_image("2.0.0", size=20000))
    # set_boot, then (same power cycle) an erase of the slot's first block
    power_on(WRITE.format(path=str(path)) + "p.ioctl(6, 0)\n")
    assert otadata(board)["state"]["ota_1"] == "EMPTY"
    assert otadata(board)["boot"] == "ota_0"
    assert power_on("print(esp32.Partition(esp32.Partition.RUNNING).info()[4])").strip() == "ota_0"


def test_machine_reset_ends_the_process_even_with_the_heap_locked(micropython, board):
    # On a board machine.reset() is firmware: it works however full the heap is. The stand-in is
    # loaded at power-on (sim/boardrun.py) and must then reset without allocating.
    code = (
        "import machine, micropython\n"
        "from iotjobs.board import Board\n"
        "b = Board()\n"
        "micropython.heap_lock()\n"
        "b.reset()\n"
        "print('still running')\n"
    )
    res = micropython(code, cwd=board)
    assert res.rc == 3, res.err
    assert "still running" not in res.out
    assert "machine.reset()" in res.out


def test_an_otadata_update_with_no_memory_leaves_no_file_open(power_on):
    # otadata is read into C memory and its file closed before anything is allocated: a
    # MemoryError (a full heap on a tight board) leaks no descriptor, however often it comes.
    out = power_on(
        "import micropython, os\n"
        "n0 = len(os.listdir('/proc/self/fd'))\n"
        "errs = 0\n"
        "for i in range(5):\n"
        "    micropython.heap_lock()\n"
        "    try:\n"
        "        esp32.Partition.mark_app_valid_cancel_rollback()\n"
        "    except MemoryError:\n"
        "        errs += 1\n"
        "    micropython.heap_unlock()\n"
        "print('LEAKED', len(os.listdir('/proc/self/fd')) - n0, 'ERRORS', errs)\n"
    )
    assert "LEAKED 0 ERRORS 5" in out, out
