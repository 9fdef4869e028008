#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <utility>

namespace luksforge {
namespace {

[[noreturn]] void throw_errno(int code, const std::string& what) {
    const std::string message = what + ": " + std::strerror(code);
    if (code == ENOENT) throw NotFoundError(message, code);
    if (code == EBUSY) throw BusyError(message, code);
    throw Error(code, message);
}

constexpr char kBase64UrlAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int base64url_value(unsigned char c) noexcept {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

}  // namespace

// --- SecretBuffer ---------------------------------------------------------------------------------------------

SecretBuffer::SecretBuffer(std::size_t size) { resize(size); }

SecretBuffer::SecretBuffer(const void* bytes, std::size_t size) {
    resize(size);
    if (size != 0) std::memcpy(data_, bytes, size);
}

SecretBuffer::SecretBuffer(SecretBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)),
      locked_(std::exchange(other.locked_, false)) {}

SecretBuffer& SecretBuffer::operator=(SecretBuffer&& other) noexcept {
    if (this != &other) {
        release();
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
        capacity_ = std::exchange(other.capacity_, 0);
        locked_ = std::exchange(other.locked_, false);
    }
    return *this;
}

SecretBuffer::~SecretBuffer() noexcept { release(); }

void SecretBuffer::release() noexcept {
    if (data_ != nullptr) {
        explicit_bzero(data_, capacity_);
        if (locked_) munlock(data_, capacity_);
        std::free(data_);
    }
    data_ = nullptr;
    size_ = capacity_ = 0;
    locked_ = false;
}

void SecretBuffer::resize(std::size_t size) {
    if (size <= capacity_) {
        // Shrinking in place: wipe the tail so it does not linger in the buffer.
        if (size < size_) explicit_bzero(data_ + size, size_ - size);
        else if (size > size_) std::memset(data_ + size_, 0, size - size_);
        size_ = size;
        return;
    }
    // Never realloc(): it could leave an unwiped copy behind. Allocate, copy, wipe the old storage.
    const std::size_t capacity = std::max(size, capacity_ * 2);
    auto* fresh = static_cast<std::uint8_t*>(std::calloc(capacity, 1));
    if (fresh == nullptr) throw std::bad_alloc();
    const bool fresh_locked = mlock(fresh, capacity) == 0;
    if (size_ != 0) std::memcpy(fresh, data_, size_);
    release();
    data_ = fresh;
    capacity_ = capacity;
    locked_ = fresh_locked;
    size_ = size;
}

void SecretBuffer::append(const void* bytes, std::size_t size) {
    if (size == 0) return;
    const std::size_t old = size_;
    // `bytes` may point into this buffer; copy through a temporary secret when it does.
    const auto* source = static_cast<const std::uint8_t*>(bytes);
    if (data_ != nullptr && source >= data_ && source < data_ + capacity_) {
        SecretBuffer copy(bytes, size);
        resize(old + size);
        std::memcpy(data_ + old, copy.data(), size);
        return;
    }
    resize(old + size);
    std::memcpy(data_ + old, bytes, size);
}

bool SecretBuffer::equals(std::span<const std::uint8_t> other) const noexcept {
    if (other.size() != size_) return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < size_; ++i) diff |= static_cast<unsigned char>(data_[i] ^ other[i]);
    return diff == 0;
}

// --- randomness -----------------------------------------------------------------------------------------------

void random_bytes(std::span<std::uint8_t> out) {
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = getrandom(out.data() + done, out.size() - done, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno(errno, "getrandom");
        }
        done += static_cast<std::size_t>(n);
    }
}

SecretBuffer random_secret(std::size_t size) {
    SecretBuffer secret(size);
    random_bytes({secret.data(), secret.size()});
    return secret;
}

SecretBuffer generate_passphrase(std::size_t entropy_bits) {
    if (entropy_bits == 0) throw FormatError("passphrase entropy must be at least 1 bit");
    const std::size_t length = (entropy_bits + 5) / 6;
    SecretBuffer random = random_secret(length);
    SecretBuffer passphrase(length);
    // 64 symbols: the low 6 bits of each random byte are uniform, so no modulo bias.
    for (std::size_t i = 0; i < length; ++i) passphrase.data()[i] = kBase64UrlAlphabet[random.data()[i] & 0x3f];
    return passphrase;
}

// --- secret files ---------------------------------------------------------------------------------------------

SecretBuffer read_secret_fd(int fd, std::size_t max_size) {
    SecretBuffer secret;
    std::size_t used = 0;
    for (;;) {
        // Grow geometrically through SecretBuffer::resize (which wipes old storage), up to one byte past the cap
        // so that an oversized input is detected rather than silently truncated.
        if (used == secret.size()) secret.resize(std::min(max_size + 1, std::max<std::size_t>(4096, used * 2)));
        const ssize_t n = ::read(fd, secret.data() + used, secret.size() - used);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno(errno, "cannot read secret from fd " + std::to_string(fd));
        }
        if (n == 0) break;
        used += static_cast<std::size_t>(n);
        if (used > max_size) throw FormatError("secret input is larger than " + std::to_string(max_size) + " bytes");
    }
    secret.resize(used);
    return secret;
}

SecretBuffer read_secret_file(const std::filesystem::path& path, std::size_t max_size) {
    if (path == "-") return read_secret_fd(STDIN_FILENO, max_size);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_errno(errno, "cannot open " + path.string());
    try {
        SecretBuffer secret = read_secret_fd(fd, max_size);
        ::close(fd);
        return secret;
    } catch (const FormatError&) {
        ::close(fd);
        throw FormatError(path.string() + " is larger than " + std::to_string(max_size) + " bytes");
    } catch (...) {
        ::close(fd);
        throw;
    }
}

void write_secret_fd(int fd, std::span<const std::uint8_t> secret) {
    std::size_t done = 0;
    while (done < secret.size()) {
        const ssize_t n = ::write(fd, secret.data() + done, secret.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno(errno, "cannot write secret");
        }
        done += static_cast<std::size_t>(n);
    }
}

void write_secret_file(const std::filesystem::path& path, std::span<const std::uint8_t> secret, bool overwrite) {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW;
    flags |= overwrite ? O_TRUNC : O_EXCL;
    const int fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) {
        if (errno == EEXIST) throw Error(EEXIST, path.string() + " already exists");
        throw_errno(errno, "cannot create " + path.string());
    }
    try {
        // An overwritten file keeps its old mode; make sure it is private before the secret goes in.
        if (::fchmod(fd, 0600) != 0) throw_errno(errno, "cannot chmod " + path.string());
        write_secret_fd(fd, secret);
        if (::fsync(fd) != 0) throw_errno(errno, "cannot sync " + path.string());
    } catch (...) {
        ::close(fd);
        throw;
    }
    if (::close(fd) != 0) throw_errno(errno, "cannot close " + path.string());
}

// --- base64url ------------------------------------------------------------------------------------------------

SecretBuffer base64url_encode(std::span<const std::uint8_t> bytes) {
    SecretBuffer out((bytes.size() * 4 + 2) / 3);
    std::size_t o = 0;
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const std::uint32_t v = (std::uint32_t(bytes[i]) << 16) | (std::uint32_t(bytes[i + 1]) << 8) | bytes[i + 2];
        out.data()[o++] = kBase64UrlAlphabet[(v >> 18) & 63];
        out.data()[o++] = kBase64UrlAlphabet[(v >> 12) & 63];
        out.data()[o++] = kBase64UrlAlphabet[(v >> 6) & 63];
        out.data()[o++] = kBase64UrlAlphabet[v & 63];
    }
    const std::size_t rest = bytes.size() - i;
    if (rest == 1) {
        const std::uint32_t v = std::uint32_t(bytes[i]) << 16;
        out.data()[o++] = kBase64UrlAlphabet[(v >> 18) & 63];
        out.data()[o++] = kBase64UrlAlphabet[(v >> 12) & 63];
    } else if (rest == 2) {
        const std::uint32_t v = (std::uint32_t(bytes[i]) << 16) | (std::uint32_t(bytes[i + 1]) << 8);
        out.data()[o++] = kBase64UrlAlphabet[(v >> 18) & 63];
        out.data()[o++] = kBase64UrlAlphabet[(v >> 12) & 63];
        out.data()[o++] = kBase64UrlAlphabet[(v >> 6) & 63];
    }
    out.resize(o);
    return out;
}

bool is_base64url(std::string_view text) noexcept {
    return std::all_of(text.begin(), text.end(), [](unsigned char c) { return base64url_value(c) >= 0; });
}

SecretBuffer base64url_decode(std::string_view text) {
    if (text.size() % 4 == 1) throw FormatError("invalid base64url: bad length");
    SecretBuffer out(text.size() * 3 / 4);
    std::size_t o = 0;
    std::uint32_t acc = 0;
    int bits = 0;
    for (unsigned char c : text) {
        const int v = base64url_value(c);
        if (v < 0) throw FormatError("invalid base64url character");
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.data()[o++] = static_cast<std::uint8_t>((acc >> bits) & 0xff);
        }
    }
    // Leftover bits must be zero (canonical encoding), otherwise two texts would decode to one value.
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) throw FormatError("invalid base64url: non-zero padding bits");
    acc = 0;
    out.resize(o);
    return out;
}

}  // namespace luksforge
