#!/usr/bin/python3
"""SHA-256 (16 hex digits) of three decrypted sectors (first, middle, last) of a LUKS2 data area, decrypted with
OpenSSL's libcrypto directly (ctypes): AES-XTS, plain64 IV = 512-byte sector number from the segment start.
bench.sh checks with it that every re-key, luksforge's or the stock tools', kept the plaintext.
Usage: sample_plain.py IMAGE VOLUME_KEY_FILE DATA_OFFSET SECTOR_SIZE
"""
import ctypes
import ctypes.util
import hashlib
import os
import sys


def main():
    image, key_file, offset, sector = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open(key_file, "rb") as f:
        key = f.read()
    if len(key) not in (32, 64):
        sys.exit("sample_plain: volume key of %d bytes" % len(key))
    crypto = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
    crypto.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
    crypto.EVP_aes_256_xts.restype = ctypes.c_void_p
    crypto.EVP_aes_128_xts.restype = ctypes.c_void_p
    crypto.EVP_DecryptInit_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                                          ctypes.c_char_p]
    crypto.EVP_DecryptUpdate.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                         ctypes.c_char_p, ctypes.c_int]
    crypto.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
    cipher = crypto.EVP_aes_256_xts() if len(key) == 64 else crypto.EVP_aes_128_xts()
    size = os.path.getsize(image)
    count = (size - offset) // sector
    digest = hashlib.sha256()
    with open(image, "rb") as f:
        for n in (0, count // 2, count - 1):
            f.seek(offset + n * sector)
            data = f.read(sector)
            if len(data) != sector:
                sys.exit("sample_plain: short read")
            iv = (n * sector // 512).to_bytes(8, "little") + bytes(8)
            ctx = crypto.EVP_CIPHER_CTX_new()
            out = ctypes.create_string_buffer(sector)
            outlen = ctypes.c_int(0)
            ok = crypto.EVP_DecryptInit_ex(ctx, cipher, None, key, iv) == 1 and \
                crypto.EVP_DecryptUpdate(ctx, out, ctypes.byref(outlen), data, sector) == 1
            crypto.EVP_CIPHER_CTX_free(ctx)
            if not ok or outlen.value != sector:
                sys.exit("sample_plain: decryption failed")
            digest.update(out.raw)
    print(digest.hexdigest()[:16])


if __name__ == "__main__":
    main()
