"""The simulator's video: a real, playable MP4 built here, byte for byte, with no encoder.

H.264 Constrained Baseline, `WIDTH`×`HEIGHT`, `FRAMES` frames at `FPS`: one IDR picture whose
macroblocks are all I_PCM (raw samples: colour bars, no compression to get wrong), then P pictures
whose macroblocks are all skipped (the same picture again). The MP4 puts its `moov` before its
`mdat` (a browser can start at once) and its one chunk of samples first in the `mdat`, so bytes
appended to the `mdat` after them change nothing a player reads: the simulator pads the file to any
size that way. Same bytes every time (tests compare hashes).
"""

from __future__ import annotations

import struct
from functools import lru_cache

WIDTH, HEIGHT = 48, 32
FPS, FRAMES = 10, 20
TIMESCALE = 1000
# An `ftyp` box: brand mp42, compatible with mp42 and isom.
FTYP = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
# Per macroblock, left to right then top to bottom: (Y, Cb, Cr), BT.601 colour bars.
BARS = [(180, 16, 146), (162, 44, 142), (131, 156, 44), (112, 72, 58), (84, 184, 198), (65, 100, 212)]

_MB = 16
_I_PCM = 25  # mb_type of an I_PCM macroblock in an I slice
_SLICE_P, _SLICE_I = 5, 7  # slice_type, "every slice of the picture is this type"
_NAL_IDR, _NAL_SLICE, _NAL_SPS, _NAL_PPS = 5, 1, 7, 8
_LOG2_MAX_FRAME_NUM = 8


class _Bits:
    """An RBSP written bit by bit (Exp-Golomb codes as H.264 spells them)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        self.bits += [(value >> i) & 1 for i in range(n - 1, -1, -1)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align(self) -> None:
        self.bits += [0] * (-len(self.bits) % 8)

    def raw(self, data: bytes) -> None:
        assert len(self.bits) % 8 == 0
        for byte in data:
            self.u(8, byte)

    def rbsp(self) -> bytes:
        """The bits with `rbsp_trailing_bits` (a one, then zeros to the byte)."""
        self.u(1, 1)
        self.align()
        return bytes(int("".join(map(str, self.bits[i : i + 8])), 2) for i in range(0, len(self.bits), 8))


def _nal(ref_idc: int, kind: int, rbsp: bytes) -> bytes:
    """A NAL unit: its header byte and the RBSP with emulation prevention bytes."""
    out = bytearray([ref_idc << 5 | kind])
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _sps() -> bytes:
    b = _Bits()
    b.u(8, 66)  # profile_idc: Baseline
    b.u(8, 0xC0)  # constraint_set0 and set1: Constrained Baseline
    b.u(8, 10)  # level_idc 1.0
    b.ue(0)  # seq_parameter_set_id
    b.ue(_LOG2_MAX_FRAME_NUM - 4)
    b.ue(2)  # pic_order_cnt_type 2: output order is decoding order
    b.ue(1)  # max_num_ref_frames
    b.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    b.ue(WIDTH // _MB - 1)
    b.ue(HEIGHT // _MB - 1)
    b.u(1, 1)  # frame_mbs_only_flag
    b.u(1, 1)  # direct_8x8_inference_flag
    b.u(1, 0)  # frame_cropping_flag
    b.u(1, 0)  # vui_parameters_present_flag
    return _nal(3, _NAL_SPS, b.rbsp())


def _pps() -> bytes:
    b = _Bits()
    b.ue(0)  # pic_parameter_set_id
    b.ue(0)  # seq_parameter_set_id
    b.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    b.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
    b.ue(0)  # num_slice_groups_minus1
    b.ue(0)  # num_ref_idx_l0_default_active_minus1
    b.ue(0)  # num_ref_idx_l1_default_active_minus1
    b.u(1, 0)  # weighted_pred_flag
    b.u(2, 0)  # weighted_bipred_idc
    b.se(0)  # pic_init_qp_minus26
    b.se(0)  # pic_init_qs_minus26
    b.se(0)  # chroma_qp_index_offset
    b.u(1, 0)  # deblocking_filter_control_present_flag
    b.u(1, 0)  # constrained_intra_pred_flag
    b.u(1, 0)  # redundant_pic_cnt_present_flag
    return _nal(3, _NAL_PPS, b.rbsp())


def _idr() -> bytes:
    b = _Bits()
    b.ue(0)  # first_mb_in_slice
    b.ue(_SLICE_I)
    b.ue(0)  # pic_parameter_set_id
    b.u(_LOG2_MAX_FRAME_NUM, 0)  # frame_num
    b.ue(0)  # idr_pic_id
    b.u(1, 0)  # no_output_of_prior_pics_flag
    b.u(1, 0)  # long_term_reference_flag
    b.se(0)  # slice_qp_delta
    for y, cb, cr in BARS:
        b.ue(_I_PCM)
        b.align()  # pcm_alignment_zero_bits
        b.raw(bytes([y]) * (_MB * _MB) + bytes([cb]) * (_MB * _MB // 4) + bytes([cr]) * (_MB * _MB // 4))
    return _nal(3, _NAL_IDR, b.rbsp())


def _skipped(frame_num: int) -> bytes:
    b = _Bits()
    b.ue(0)  # first_mb_in_slice
    b.ue(_SLICE_P)
    b.ue(0)  # pic_parameter_set_id
    b.u(_LOG2_MAX_FRAME_NUM, frame_num)
    b.u(1, 0)  # num_ref_idx_active_override_flag
    b.u(1, 0)  # ref_pic_list_modification_flag_l0
    b.u(1, 0)  # adaptive_ref_pic_marking_mode_flag: sliding window
    b.se(0)  # slice_qp_delta
    b.ue(len(BARS))  # mb_skip_run: every macroblock
    return _nal(2, _NAL_SLICE, b.rbsp())


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full(kind: bytes, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", flags), *parts)  # version 0


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _moov(sizes: list[int], first_offset: int, sps: bytes, pps: bytes) -> bytes:
    duration = len(sizes) * TIMESCALE // FPS
    avcc = _box(
        b"avcC", bytes([1, 66, 0xC0, 10, 0xFF, 0xE1]), struct.pack(">H", len(sps)), sps, b"\x01", struct.pack(">H", len(pps)), pps
    )
    avc1 = _box(
        b"avc1",
        bytes(6), struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(16), struct.pack(">HH", WIDTH, HEIGHT),
        struct.pack(">II", 0x480000, 0x480000), bytes(4), struct.pack(">H", 1),  # 72 dpi, one frame per sample
        bytes(32), struct.pack(">Hh", 0x18, -1),  # no compressor name, depth 24
        avcc,
    )
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, struct.pack(">I", 1), avc1),
        _full(b"stts", 0, struct.pack(">III", 1, len(sizes), TIMESCALE // FPS)),
        _full(b"stss", 0, struct.pack(">II", 1, 1)),
        _full(b"stsc", 0, struct.pack(">IIII", 1, 1, len(sizes), 1)),
        _full(b"stsz", 0, struct.pack(">II", 0, len(sizes)), *(struct.pack(">I", s) for s in sizes)),
        _full(b"stco", 0, struct.pack(">II", 1, first_offset)),
    )
    minf = _box(
        b"minf",
        _full(b"vmhd", 1, bytes(8)),
        _box(b"dinf", _full(b"dref", 0, struct.pack(">I", 1), _full(b"url ", 1))),
        stbl,
    )
    language = sum((ord(c) - 0x60) << shift for c, shift in zip("und", (10, 5, 0), strict=True))
    mdia = _box(
        b"mdia",
        _full(b"mdhd", 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, duration, language, 0)),
        _full(b"hdlr", 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00"),
        minf,
    )
    tkhd = _full(
        b"tkhd", 3, struct.pack(">IIIII", 0, 0, 1, 0, duration), bytes(8), struct.pack(">hhhH", 0, 0, 0, 0), _MATRIX,
        struct.pack(">II", WIDTH << 16, HEIGHT << 16),
    )
    mvhd = _full(
        b"mvhd", 0, struct.pack(">IIIIIH", 0, 0, TIMESCALE, duration, 0x10000, 0x100), bytes(10), _MATRIX, bytes(24),
        struct.pack(">I", 2),
    )
    return _box(b"moov", mvhd, _box(b"trak", tkhd, mdia))


@lru_cache(maxsize=1)
def playable() -> tuple[bytes, bytes]:
    """The file's head (`ftyp`, `moov`, the `mdat` header with its size field zero) and its
    samples; the smallest playable file is their concatenation with that size filled in."""
    sps, pps = _sps(), _pps()
    frames = [_idr(), *(_skipped(n) for n in range(1, FRAMES))]
    samples = [struct.pack(">I", len(nal)) + nal for nal in frames]
    sizes = [len(s) for s in samples]
    moov_size = len(_moov(sizes, 0, sps, pps))
    moov = _moov(sizes, len(FTYP) + moov_size + 8, sps, pps)
    return FTYP + moov + b"\x00\x00\x00\x00mdat", b"".join(samples)


def header(size: int) -> bytes:
    """The first bytes of the simulator's video of `size` bytes: everything but the `mdat`'s
    padding; when `size` leaves no room for all of it, the first `size` bytes of the smallest
    playable file."""
    head, samples = playable()
    mdat_at = len(head) - 8
    mdat_size = max(size, len(head) + len(samples)) - mdat_at
    return (head[:mdat_at] + struct.pack(">I", mdat_size) + head[mdat_at + 4 :] + samples)[:size]
