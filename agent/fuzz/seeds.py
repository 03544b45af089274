"""Writes small seed inputs for the two libFuzzer harnesses (stdlib only).

usage: seeds.py SPAWN_DIR LAUNCHER_DIR
Never writes anywhere but the two directories it is given.
"""
import os
import struct
import sys


def frame(t, fields=b""):
    body = struct.pack("<H", t) + fields
    return struct.pack("<I", len(body)) + body


def u32(tag, v):
    return struct.pack("<HII", tag, 4, v)


def u64(tag, v):
    return struct.pack("<HIQ", tag, 8, v)


def raw(tag, b):
    return struct.pack("<HI", tag, len(b)) + b


def spawn_seeds():
    base = u32(1, 1) + raw(2, b"/bin/true")
    yield b"\x00" + frame(1, base)
    yield b"\x00" + frame(1, base + raw(2, b"-c") + raw(3, b"PATH=/bin") + raw(4, b"/tmp"))
    yield b"\x02" + frame(1, base + raw(13, b"\x01" + struct.pack("<I", 1))
                          + raw(14, b"\x02") + raw(15, b"\x04"))
    yield b"\x00" + frame(1, base + raw(14, b"\x03/run/x.sock"))
    yield b"\x00" + frame(1, base + u64(5, 0x7E020080) + raw(6, b"box")
                          + raw(7, b"0 1000 1\n") + raw(8, b"0 1000 1\n") + raw(9, b"deny")
                          + u32(10, 0) + u32(11, 0) + raw(12, struct.pack("<II", 1, 2)))
    yield b"\x00" + frame(1, base + u32(16, 1) + u32(17, 1) + u64(18, 5000) + u32(19, 0)
                          + raw(77, b"future"))
    yield b"\x00" + frame(0x12, u32(1, 15))
    yield b"\x00" + frame(0x10)


def launcher_seeds():
    yield frame(1, u64(1, 1))
    yield frame(1, u64(1, 2)) + frame(1, u64(1, 3))
    yield frame(1, u64(1, 4) + raw(9, b"x"))
    yield b"R\x01\x00\x00\x00" + b"E" + b"X\x02\x00\x00\x00\x06execve"


def main():
    spawn_dir, launcher_dir = sys.argv[1], sys.argv[2]
    for d, seeds in ((spawn_dir, spawn_seeds()), (launcher_dir, launcher_seeds())):
        for i, s in enumerate(seeds):
            with open(os.path.join(d, f"seed-{i:02d}"), "wb") as f:
                f.write(s)


if __name__ == "__main__":
    main()
