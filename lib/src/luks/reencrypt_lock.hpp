// Internal: one re-encryption per LUKS UUID at a time among luksforge processes.
//
// libcryptsetup locks a re-encryption by the volume's UUID (/run/cryptsetup/LUKS2-<uuid>...), not by file, and a
// second process that meets that lock fails half-way: its new keyslots and re-encryption metadata are already
// in the header. Copies of one image (stamp instances, cp clones) share the UUID — and must keep it: the UUID is
// what /etc/crypttab and rd.luks.uuid= inside the image name — so luksforge waits for its turn instead.
#pragma once

#include <string>

namespace luksforge::detail {

class ReencryptLock {
public:
    // Blocks until no other luksforge process re-encrypts a volume with this UUID.
    static ReencryptLock acquire(const std::string& uuid);
    ReencryptLock(ReencryptLock&& other) noexcept;
    ReencryptLock& operator=(ReencryptLock&&) = delete;
    ReencryptLock(const ReencryptLock&) = delete;
    ReencryptLock& operator=(const ReencryptLock&) = delete;
    ~ReencryptLock() noexcept;

private:
    explicit ReencryptLock(int fd) noexcept : fd_(fd) {}
    int fd_ = -1;
};

}  // namespace luksforge::detail
