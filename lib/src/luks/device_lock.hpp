// Internal: helpers of the luksforge device lock shared by luks.cpp.
#pragma once

#include <filesystem>

namespace luksforge::detail {

// Directory of the lock files (one per device, named by device/inode numbers).
inline constexpr const char* kLockDirectory = "/run/luksforge/locks";

// Throw BusyError when `device` is a block device that someone holds open exclusively (mounted, dm, ...).
void ensure_block_device_not_in_use(const std::filesystem::path& device);

}  // namespace luksforge::detail
