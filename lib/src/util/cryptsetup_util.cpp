#include "util/cryptsetup_util.hpp"

#include <libcryptsetup.h>

#include <cerrno>
#include <cstring>

namespace luksforge::detail {
namespace {

// Per thread: the mutex serialises callers, but a message belongs to the thread whose call produced it.
thread_local std::string last_error;

void log_callback(int level, const char* msg, void*) noexcept {
    if (level != CRYPT_LOG_ERROR || msg == nullptr) return;
    try {
        std::string text(msg);
        while (!text.empty() && (text.back() == '\n' || text.back() == '.' || text.back() == ' ')) text.pop_back();
        last_error = std::move(text);
    } catch (...) {
        // Out of memory while copying a log line: losing the message is better than unwinding through C.
    }
}

struct DefaultLogInstaller {
    DefaultLogInstaller() noexcept { crypt_set_log_callback(nullptr, log_callback, nullptr); }
};

}  // namespace

std::recursive_mutex& cryptsetup_mutex() noexcept {
    static std::recursive_mutex mutex;
    return mutex;
}

std::unique_lock<std::recursive_mutex> cryptsetup_guard() {
    std::unique_lock lock(cryptsetup_mutex());
    // Install the default-context callback once, under the lock, before the first library call.
    static DefaultLogInstaller installer;
    (void)installer;
    return lock;
}

void attach_log_callback(crypt_device* cd) noexcept {
    std::lock_guard lock(cryptsetup_mutex());
    crypt_set_log_callback(cd, log_callback, nullptr);
}

std::string last_crypt_error() { return last_error; }

void clear_crypt_error() noexcept { last_error.clear(); }

void throw_crypt_error(int negative_errno, std::string_view what) {
    const int code = negative_errno < 0 ? -negative_errno : (negative_errno == 0 ? EIO : negative_errno);
    std::string detail = last_error.empty() ? std::string(std::strerror(code)) : last_error;
    last_error.clear();
    std::string message(what);
    message += ": ";
    message += detail;
    switch (code) {
        case EPERM: throw AuthError(message, code);
        case ENOENT: throw NotFoundError(message, code);
        case EBUSY: throw BusyError(message, code);
        case EINVAL: throw FormatError(message, code);
        default: throw Error(code, message);
    }
}

}  // namespace luksforge::detail
