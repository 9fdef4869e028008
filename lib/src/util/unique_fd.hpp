// Internal: one owned file descriptor, closed when its scope ends (never copied, so never closed twice).
#pragma once

#include <unistd.h>

namespace luksforge::detail {

struct UniqueFd {
    int fd = -1;
    UniqueFd() noexcept = default;
    explicit UniqueFd(int f) noexcept : fd(f) {}
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() noexcept {
        if (fd >= 0) ::close(fd);
    }
};

}  // namespace luksforge::detail
