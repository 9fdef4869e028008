// Internal: the glue every luksforge area uses around libcryptsetup — one process-wide lock (the library is
// not thread-safe), capture of its log messages so exceptions carry its own words, and errno → exception mapping.
#pragma once

#include <luksforge/error.hpp>

#include <mutex>
#include <string>
#include <string_view>

struct crypt_device;

namespace luksforge::detail {

// Hold this for every call into libcryptsetup. Recursive, so helpers that lock may call each other.
std::recursive_mutex& cryptsetup_mutex() noexcept;
[[nodiscard]] std::unique_lock<std::recursive_mutex> cryptsetup_guard();

// Route libcryptsetup's messages for `cd` (nullptr = the library default) into luksforge's capture: errors
// are remembered per thread as the "last error"; debug/normal output is dropped. Idempotent.
void attach_log_callback(crypt_device* cd) noexcept;
// The last error message libcryptsetup logged on this thread since the last clear (may be empty).
std::string last_crypt_error();
void clear_crypt_error() noexcept;

// Throw the luksforge exception for `negative_errno` (as libcryptsetup returns it): -EPERM → AuthError,
// -ENOENT → NotFoundError, -EBUSY → BusyError, -EINVAL → FormatError, anything else → Error. The message is
// "<what>: <libcryptsetup's last error or strerror>".
[[noreturn]] void throw_crypt_error(int negative_errno, std::string_view what);

// Throw for a negative return value, pass non-negative ones through.
inline int check_crypt(int rc, std::string_view what) {
    if (rc < 0) throw_crypt_error(rc, what);
    return rc;
}

}  // namespace luksforge::detail
