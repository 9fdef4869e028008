#include "luks/reencrypt_lock.hpp"

#include "luks/device_lock.hpp"

#include <luksforge/error.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <utility>

namespace luksforge::detail {

ReencryptLock ReencryptLock::acquire(const std::string& uuid) {
    // A UUID is hex digits and dashes; anything else (a hostile header) must not steer the lock path.
    std::string name = uuid;
    std::replace_if(name.begin(), name.end(), [](char c) { return !std::isxdigit(static_cast<unsigned char>(c)) && c != '-'; }, '_');
    if (name.empty()) name = "no-uuid";
    for (const char* dir : {"/run/luksforge", kLockDirectory}) {
        if (::mkdir(dir, 0700) != 0 && errno != EEXIST)
            throw Error(errno, std::string("cannot create ") + dir + ": " + std::strerror(errno));
    }
    const std::string path = std::string(kLockDirectory) + "/reencrypt-" + name;
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) throw Error(errno, "cannot open lock file " + path + ": " + std::strerror(errno));
    while (::flock(fd, LOCK_EX) != 0) {
        if (errno == EINTR) continue;
        const int code = errno;
        ::close(fd);
        throw Error(code, "cannot lock " + path + ": " + std::strerror(code));
    }
    return ReencryptLock(fd);
}

ReencryptLock::ReencryptLock(ReencryptLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

ReencryptLock::~ReencryptLock() noexcept {
    if (fd_ >= 0) ::close(fd_);  // releases the flock; the file stays (unlinking would race)
}

}  // namespace luksforge::detail
