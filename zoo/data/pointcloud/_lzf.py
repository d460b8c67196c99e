"""LZF (liblzf) decompression and compression in pure Python, for PCD ``DATA binary_compressed``.

Fast enough for the clouds of object datasets (tens of thousands of points); open3d reads large compressed
files much faster when it is installed.
"""

from __future__ import annotations

__all__ = ["lzf_compress", "lzf_decompress"]

_MAX_OFFSET = 1 << 13  # back-references reach 8192 bytes
_MAX_MATCH = 7 + 255 + 2  # longest back-reference: 264 bytes
_MAX_LITERAL = 32


def lzf_decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress an LZF stream; ``ValueError`` when it is corrupt or does not give ``expected_size`` bytes."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            length = ctrl + 1
            if i + length > n:
                raise ValueError("corrupt LZF stream: literal run past the end of the data")
            out += data[i : i + length]
            i += length
            continue
        length = ctrl >> 5
        if length == 7:
            if i >= n:
                raise ValueError("corrupt LZF stream: truncated back-reference")
            length += data[i]
            i += 1
        if i >= n:
            raise ValueError("corrupt LZF stream: truncated back-reference")
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        length += 2
        if ref < 0:
            raise ValueError("corrupt LZF stream: back-reference before the start of the output")
        if ref + length <= len(out):
            out += out[ref : ref + length]
        else:  # overlapping copy (run-length style): byte by byte
            for k in range(length):
                out.append(out[ref + k])
    if len(out) != expected_size:
        raise ValueError(f"LZF stream decompressed to {len(out)} bytes, header says {expected_size}")
    return bytes(out)


def lzf_compress(data: bytes) -> bytes:
    """Compress ``data`` into an LZF stream that ``lzf_decompress`` (and PCL / open3d) can read."""
    out = bytearray()
    literal = bytearray()
    table: dict[bytes, int] = {}
    i, n = 0, len(data)

    def flush() -> None:
        while literal:
            chunk = literal[:_MAX_LITERAL]
            out.append(len(chunk) - 1)
            out.extend(chunk)
            del literal[:_MAX_LITERAL]

    while i < n:
        if i + 2 < n:
            key = data[i : i + 3]
            ref = table.get(key)
            table[key] = i
            if ref is not None and i - ref <= _MAX_OFFSET:
                limit = min(_MAX_MATCH, n - i)
                length = 3
                while length < limit and data[ref + length] == data[i + length]:
                    length += 1
                flush()
                offset, code = i - ref - 1, length - 2
                if code < 7:
                    out.append((code << 5) | (offset >> 8))
                else:
                    out.append((7 << 5) | (offset >> 8))
                    out.append(code - 7)
                out.append(offset & 0xFF)
                i += length
                continue
        literal.append(data[i])
        i += 1
    flush()
    return bytes(out)
