"""Interface capture of ``stirscope listen --iface NAME [--filter BPF] [--write-pcap PATH]``.

Theory of operation. A Linux ``AF_PACKET``/``SOCK_RAW`` socket (standard library; needs root or
CAP_NET_RAW) receives every frame of one interface with its link header, and the kernel's
receive time (``SO_TIMESTAMPNS``). A capture thread reads it, writes each frame to the evidence
pcap (``--write-pcap``: every frame that passed the filter, shed or not, so the file numbers
frames as the call records do), and offers it to the listener's ``LiveFeed``, whose pipeline
thread decodes link, IP (with defragmentation), UDP/TCP (with reassembly), HEP and SIP and
tracks calls; verification runs on the feed's threads as of each packet's capture time.

Filter. ``--filter`` takes a tcpdump/libpcap expression, compiled to classic BPF and attached to
the socket (``SO_ATTACH_FILTER``), so the kernel drops RTP and other traffic before it is
copied. The socket is created bound to no protocol, gets the filter, then is bound to the
interface: no packet slips in unfiltered. Compilation uses the system libpcap through ctypes
(``pcap_open_dead`` + ``pcap_compile``: compiling only, no capture, no privileges; the library
is installed wherever tcpdump/tshark are), else ``tcpdump -dd``. No Python binding is needed:
pcapy-ng and python-libpcap wrap the whole libpcap capture loop, which AF_PACKET already gives
us, and would add a compiled dependency for two function calls. Kernels strip VLAN tags before
the filter runs: a filter naming ``vlan`` does not match on such interfaces.

Linux ``packet(7)``; ``socket(7)`` (SO_TIMESTAMPNS, SO_ATTACH_FILTER); tcpdump.org link types.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO

from analyzer.linklayer import LINKTYPE_ETHERNET, LINKTYPE_RAW
from analyzer.pcapwriter import DEFAULT_SNAPLEN, PcapWriter
from service.live_feed import LiveFeed

# Linux constants not exported by the socket module (linux/if_ether.h, asm-generic/socket.h,
# linux/socket.h, linux/if_packet.h).
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
PACKET_OUTGOING = 4
# Interface hardware types (linux/if_arp.h) and the link type their frames start with.
ARPHRD_ETHER = 1
ARPHRD_PPP = 512
ARPHRD_RAWIP = 519
ARPHRD_TUNNEL = 768
ARPHRD_TUNNEL6 = 769
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
LINKTYPES = {
    ARPHRD_ETHER: LINKTYPE_ETHERNET,
    ARPHRD_LOOPBACK: LINKTYPE_ETHERNET,  # Linux loopback frames carry a zeroed Ethernet header
    ARPHRD_NONE: LINKTYPE_RAW,  # tun devices: raw IP
    ARPHRD_RAWIP: LINKTYPE_RAW,
    ARPHRD_TUNNEL: LINKTYPE_RAW,
    ARPHRD_TUNNEL6: LINKTYPE_RAW,
    ARPHRD_PPP: LINKTYPE_RAW,
}
# libpcap DLT values for pcap_open_dead (pcap/dlt.h: LINKTYPE_RAW 101 is DLT_RAW 12 on Linux).
DLT_FOR_LINKTYPE = {LINKTYPE_ETHERNET: 1, LINKTYPE_RAW: 12}
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF  # pcap_compile: "broadcast" primitives cannot be used
# Receive buffer per read: the largest frame of a 65536-byte-MTU loopback (or a GRO-merged
# frame) fits; tcpdump's default snap length.
RECV_BUFFER = DEFAULT_SNAPLEN
# Kernel receive buffer asked for: a burst of ~10,000 1.3 kB SIP frames (net.core.rmem_max
# caps it; what is still dropped is read back with PACKET_STATISTICS).
SOCKET_BUFFER = 16 * 1024 * 1024
# How often the capture thread checks for stop, flushes the pcap and reads kernel drops.
POLL_S = 0.2
# Classic BPF program length limit of the kernel (BPF_MAXINSNS, linux/bpf_common.h).
BPF_MAXINSNS = 4096
SYS_CLASS_NET = Path("/sys/class/net")

Instruction = tuple[int, int, int, int]
"""One classic BPF instruction: (code, jt, jf, k). Linux ``struct sock_filter``."""


class CaptureError(Exception):
    """The capture cannot start (unknown interface, no permission, bad filter)."""


def interface_linktype(name: str) -> int:
    """The link type of ``name``'s frames (from its hardware type); ``CaptureError`` when the
    interface is unknown or of a kind the link layer does not decode. Linux ``packet(7)``."""
    try:
        hwtype = int((SYS_CLASS_NET / name / "type").read_text().strip())
    except (OSError, ValueError) as exc:
        raise CaptureError(f"no such interface: {name!r}") from exc
    try:
        return LINKTYPES[hwtype]
    except KeyError:
        raise CaptureError(f"interface {name!r}: unsupported hardware type {hwtype}") from None


# -- filters ---------------------------------------------------------------------------------


class _BpfInsn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn)))


def _compile_libpcap(expression: str, linktype: int, snaplen: int) -> list[Instruction] | None:
    """Compile with the system libpcap (``None`` when it is not installed)."""
    found = ctypes.util.find_library("pcap")
    if found is None:
        return None
    lib = ctypes.CDLL(found)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = (
        ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
        ctypes.c_uint32,
    )  # fmt: skip
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
    lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
    lib.pcap_close.argtypes = (ctypes.c_void_p,)
    handle = lib.pcap_open_dead(DLT_FOR_LINKTYPE[linktype], snaplen)
    if not handle:
        raise CaptureError("libpcap: pcap_open_dead failed")
    try:
        program = _BpfProgram()
        status = lib.pcap_compile(
            handle, ctypes.byref(program), expression.encode(), 1, PCAP_NETMASK_UNKNOWN
        )
        if status != 0:
            message = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            raise CaptureError(f"bad filter {expression!r}: {message}")
        try:
            return [
                (i.code, i.jt, i.jf, i.k)
                for i in (program.bf_insns[n] for n in range(program.bf_len))
            ]
        finally:
            lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)


def parse_dd(text: str) -> list[Instruction]:
    """Parse ``tcpdump -dd`` output (``{ 0x28, 0, 0, 0x0000000c },`` per line)."""
    out: list[Instruction] = []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if not line:
            continue
        if not (line.startswith("{") and line.endswith("}")):
            raise CaptureError(f"unexpected tcpdump -dd line: {line!r}")
        fields = [part.strip() for part in line[1:-1].split(",")]
        if len(fields) != 4:
            raise CaptureError(f"unexpected tcpdump -dd line: {line!r}")
        code, jt, jf, k = (int(value, 0) for value in fields)
        out.append((code, jt, jf, k))
    return out


def _compile_tcpdump(expression: str, interface: str) -> list[Instruction] | None:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        return None
    done = subprocess.run(
        [tcpdump, "-i", interface, "-dd", expression],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        raise CaptureError(f"bad filter {expression!r}: {done.stderr.strip()}")
    return parse_dd(done.stdout)


def compile_filter(
    expression: str, linktype: int, interface: str, *, snaplen: int = DEFAULT_SNAPLEN
) -> list[Instruction]:
    """A tcpdump/libpcap filter expression as classic BPF for frames of ``linktype``.

    pcap-filter(7); Linux ``socket(7)`` SO_ATTACH_FILTER.
    """
    program = _compile_libpcap(expression, linktype, snaplen)
    if program is None:
        program = _compile_tcpdump(expression, interface)
    if program is None:
        raise CaptureError("--filter needs libpcap (libpcap0.8) or tcpdump installed")
    if not 0 < len(program) <= BPF_MAXINSNS:
        raise CaptureError(f"filter compiles to {len(program)} instructions")
    return program


def attach_filter(sock: socket.socket, program: list[Instruction]) -> None:
    """Attach a classic BPF program (``struct sock_fprog``) to ``sock``. Linux ``socket(7)``."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in program))
    fprog = struct.pack("HP", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


def open_packet_socket(interface: str, program: list[Instruction] | None) -> socket.socket:
    """An AF_PACKET raw socket on ``interface``, filtered before the first packet arrives.

    Linux ``packet(7)``: a packet socket created with protocol 0 receives nothing until bound.
    """
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError as exc:
        raise CaptureError("capturing needs root or CAP_NET_RAW") from exc
    try:
        if program is not None:
            attach_filter(sock, program)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((interface, ETH_P_ALL))
        sock.settimeout(POLL_S)
    except OSError as exc:
        sock.close()
        raise CaptureError(f"cannot capture on {interface!r}: {exc.strerror or exc}") from exc
    return sock


def kernel_statistics(sock: socket.socket) -> tuple[int, int]:
    """``(packets, drops)`` since the last call (the kernel resets them). ``packet(7)``."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    packets, drops = struct.unpack("=II", raw)
    return packets, drops


def _timestamp(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("=qq", data[:16])
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


class InterfaceCapture:
    """``--iface``: one interface into one ``LiveFeed``, optionally kept as a pcap file.

    Linux ``packet(7)``; draft-ietf-opsawg-pcap (the evidence file).
    """

    def __init__(
        self,
        interface: str,
        feed: LiveFeed,
        *,
        bpf: str | None = None,
        write_pcap: Path | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.interface = interface
        self.feed = feed
        self.bpf = bpf
        self.write_pcap = write_pcap
        self.received = 0
        self.kernel_drops = 0
        self.skipped_outgoing = 0
        self.pcap_error = False  # writing the pcap failed (it stops there)
        self._wall_ns = wall_ns
        self._sock: socket.socket | None = None
        self._pcap_file: BinaryIO | None = None
        self._writer: PcapWriter | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._linktype = LINKTYPE_ETHERNET
        self._loopback = False

    async def start(self) -> list[str]:
        """Open the socket (and the pcap file) and start capturing; ``CaptureError`` when
        the capture cannot start."""
        self._linktype = interface_linktype(self.interface)
        hwtype = (SYS_CLASS_NET / self.interface / "type").read_text().strip()
        self._loopback = int(hwtype) == ARPHRD_LOOPBACK
        program = None
        if self.bpf:
            program = compile_filter(self.bpf, self._linktype, self.interface)
        self._sock = open_packet_socket(self.interface, program)
        if self.write_pcap is not None:
            try:
                self._pcap_file = open(self.write_pcap, "wb")  # noqa: SIM115 - closed in stop
            except OSError as exc:
                self._sock.close()
                raise CaptureError(f"cannot write {self.write_pcap}: {exc.strerror}") from exc
            self._writer = PcapWriter(self._pcap_file, self._linktype)
        self.feed.start()
        self._thread = threading.Thread(
            target=self._capture, name=f"capture-{self.interface}", daemon=True
        )
        self._thread.start()
        lines = [f"iface {self.interface}" + (f" filter {self.bpf!r}" if self.bpf else "")]
        if self.write_pcap is not None:
            lines.append(f"pcap {self.write_pcap}")
        return lines

    async def stop(self) -> None:
        """Stop capturing, then process everything queued and write every call."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self.feed.stop)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self.kernel_drops += kernel_statistics(self._sock)[1]
            self._sock.close()
        if self._pcap_file is not None:
            self._pcap_file.close()

    def summary(self) -> str:
        drops = f", {self.kernel_drops} kernel drops" if self.kernel_drops else ""
        failed = ", pcap write FAILED" if self.pcap_error else ""
        return f"iface {self.interface}: {self.feed.summary()}{drops}{failed}"

    def _capture(self) -> None:
        sock = self._sock
        assert sock is not None
        feed = self.feed
        pipeline = feed.pipeline
        writer = self._writer
        linktype = self._linktype
        wall_ns = self._wall_ns
        ancillary = socket.CMSG_SPACE(16)
        next_poll = time.monotonic() + POLL_S
        frame = 0
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, address = sock.recvmsg(RECV_BUFFER, ancillary)
            except TimeoutError:
                data = b""
            except OSError:
                feed.stats.internal_errors += 1
                data = b""
            if data:
                if self._loopback and address[2] == PACKET_OUTGOING:
                    # Loopback frames are seen leaving and arriving: keep one copy, as libpcap.
                    self.skipped_outgoing += 1
                else:
                    now = wall_ns()
                    ts_ns = _timestamp(ancdata) or now
                    self.received += 1
                    frame += 1
                    if writer is not None:
                        try:
                            writer.write(ts_ns, data)
                        except OSError:  # disk full: stop keeping evidence, say so
                            self.pcap_error = True
                            writer = self._writer = None
                    work = partial(pipeline.feed_record, linktype, data, ts_ns, now, frame)
                    feed.offer(work, len(data))
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_S
                self._poll(sock)

    def _poll(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.kernel_drops += kernel_statistics(sock)[1]
        if self._pcap_file is not None:
            with contextlib.suppress(OSError):
                self._pcap_file.flush()
