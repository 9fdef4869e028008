#include "luks/device_lock.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace luksforge {
namespace {

// flock() conflicts between two open file descriptions even inside one process, but a process that already
// holds a device (a pipeline holding a DeviceLock, then opening a Volume) must not lock itself out. So every
// lock file is opened once per process and reference-counted here; flock guards against other processes.
struct HeldLock {
    int fd = -1;
    int count = 0;
    bool exclusive = false;
};

std::mutex& registry_mutex() {
    static std::mutex mutex;
    return mutex;
}
std::map<std::string, HeldLock>& registry() {
    static std::map<std::string, HeldLock> locks;
    return locks;
}

std::string lock_file_for(const std::filesystem::path& device) {
    struct stat st {};
    if (::stat(device.c_str(), &st) != 0) {
        const int code = errno;
        if (code == ENOENT || code == ENOTDIR) throw NotFoundError(device.string() + ": no such file or device", code);
        throw Error(code, "cannot stat " + device.string() + ": " + std::strerror(code));
    }
    if (S_ISBLK(st.st_mode))
        return std::string(detail::kLockDirectory) + "/b" + std::to_string(major(st.st_rdev)) + ":" +
               std::to_string(minor(st.st_rdev));
    if (!S_ISREG(st.st_mode)) throw FormatError(device.string() + " is neither a regular file nor a block device");
    return std::string(detail::kLockDirectory) + "/" + std::to_string(st.st_dev) + "-" + std::to_string(st.st_ino);
}

void make_lock_directory() {
    for (const char* dir : {"/run/luksforge", detail::kLockDirectory}) {
        if (::mkdir(dir, 0700) != 0 && errno != EEXIST)
            throw Error(errno, std::string("cannot create ") + dir + ": " + std::strerror(errno));
    }
}

}  // namespace

namespace detail {

void ensure_block_device_not_in_use(const std::filesystem::path& device) {
    struct stat st {};
    if (::stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return;
    // O_EXCL on a block device fails with EBUSY while the kernel has it claimed (mounted, device-mapper, md).
    const int fd = ::open(device.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd < 0) {
        if (errno == EBUSY) throw BusyError(device.string() + ": device in use");
        return;  // other errors surface when libcryptsetup opens it
    }
    ::close(fd);
}

}  // namespace detail

DeviceLock DeviceLock::acquire(const std::filesystem::path& device, bool exclusive) {
    const std::string lock_path = lock_file_for(device);
    std::lock_guard guard(registry_mutex());
    auto& locks = registry();
    if (auto it = locks.find(lock_path); it != locks.end()) {
        HeldLock& held = it->second;
        if (exclusive && !held.exclusive) {
            // Upgrade in place; fails if another process shares the lock.
            if (::flock(held.fd, LOCK_EX | LOCK_NB) != 0)
                throw BusyError(device.string() + " is locked by another luksforge process");
            held.exclusive = true;
        }
        ++held.count;
        return DeviceLock(held.fd);
    }
    make_lock_directory();
    const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) throw Error(errno, "cannot open lock file " + lock_path + ": " + std::strerror(errno));
    if (::flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
        const int code = errno;
        ::close(fd);
        if (code == EWOULDBLOCK) throw BusyError(device.string() + " is locked by another luksforge process");
        throw Error(code, "cannot lock " + lock_path + ": " + std::strerror(code));
    }
    locks[lock_path] = HeldLock{fd, 1, exclusive};
    return DeviceLock(fd);
}

DeviceLock::DeviceLock(DeviceLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

DeviceLock& DeviceLock::operator=(DeviceLock&& other) noexcept {
    if (this != &other) {
        DeviceLock old(std::move(*this));
        fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
}

DeviceLock::~DeviceLock() noexcept {
    if (fd_ < 0) return;
    std::lock_guard guard(registry_mutex());
    auto& locks = registry();
    for (auto it = locks.begin(); it != locks.end(); ++it) {
        if (it->second.fd != fd_) continue;
        if (--it->second.count == 0) {
            // Closing the descriptor releases the flock. The lock file stays: unlinking it would race with
            // another process that opened it and is about to lock it.
            ::close(fd_);
            locks.erase(it);
        }
        break;
    }
    fd_ = -1;
}

}  // namespace luksforge
