// LUKS1 Clevis bindings (RHEL 7, upgraded RHEL 8): Clevis keeps each keyslot's JWE in the luksmeta slot of the
// same number, under Clevis's UUID (clevis_luks1_save_slot). Read through Debian's libluksmeta, so list, pass,
// unlock --test and unlock --key-fd work on them (and audit reads them); activation (unlock --name) and writing
// stay LUKS2-only (luks1_refusal() says what works instead, and how to convert).
#include "clevis/clevis_internal.hpp"

#include "util/cryptsetup_util.hpp"

#include <luksforge/error.hpp>

#include <luksmeta.h>

#include <cstring>

namespace luksforge::clevis::internal {
namespace {

// cb6e8904-81ff-40da-a84a-07ab9ab5715e, as clevis-luks-common-functions' CLEVIS_UUID.
constexpr luksmeta_uuid_t clevis_uuid = {0xcb, 0x6e, 0x89, 0x04, 0x81, 0xff, 0x40, 0xda,
                                         0xa8, 0x4a, 0x07, 0xab, 0x9a, 0xb5, 0x71, 0x5e};
constexpr int luks1_slots = 8;
constexpr std::size_t max_jwe_bytes = 1 << 20;

}  // namespace

std::vector<LuksmetaBinding> luksmeta_bindings(const Volume& volume) {
    std::vector<LuksmetaBinding> result;
    auto guard = luksforge::detail::cryptsetup_guard();
    crypt_device* cd = volume.native_handle();
    const int test = luksmeta_test(cd);
    if (test == -ENOENT) return result;  // no luksmeta header: no Clevis bindings
    if (test < 0)
        throw FormatError("the luksmeta header of " + volume.path().string() + " is damaged (" + std::strerror(-test) +
                          ")");
    for (int slot = 0; slot < luks1_slots; ++slot) {
        luksmeta_uuid_t uuid{};
        const int size = luksmeta_load(cd, slot, uuid, nullptr, 0);
        if (size == -ENODATA || size == -EBADSLT) continue;
        LuksmetaBinding binding;
        binding.keyslot = slot;
        if (size < 0) {
            binding.problem = std::string("luksmeta slot unreadable: ") + std::strerror(-size);
        } else if (std::memcmp(uuid, clevis_uuid, sizeof uuid) != 0) {
            continue;  // another tool's metadata
        } else if (static_cast<std::size_t>(size) > max_jwe_bytes) {
            binding.problem = "luksmeta slot holds " + std::to_string(size) + " bytes, more than a JWE";
        } else {
            binding.jwe.resize(static_cast<std::size_t>(size));
            const int read = luksmeta_load(cd, slot, uuid, binding.jwe.data(), binding.jwe.size());
            if (read < 0) {
                binding.problem = std::string("luksmeta slot unreadable: ") + std::strerror(-read);
                binding.jwe.clear();
            } else {
                binding.jwe.resize(static_cast<std::size_t>(read));
                while (!binding.jwe.empty() && (binding.jwe.back() == '\n' || binding.jwe.back() == '\0'))
                    binding.jwe.pop_back();
            }
        }
        result.push_back(std::move(binding));
    }
    return result;
}

std::string luks1_refusal(const Volume& volume) {
    std::string slots;
    try {
        for (const LuksmetaBinding& b : luksmeta_bindings(volume))
            slots += (slots.empty() ? "" : ", ") + std::to_string(b.keyslot);
    } catch (const Error&) {
    }
    const std::string dev = volume.path().string();
    std::string message = dev + " is LUKS1";
    message += slots.empty() ? "" : " with Clevis bindings in luksmeta slots " + slots;
    message += ": on LUKS1, luksforge's `list`, `pass`, `unlock --test` and `unlock --key-fd` work (they read "
               "luksmeta); `unlock --name` does not (`luksforge pass " + dev + " --slot N | cryptsetup open " + dev +
               " NAME --key-file -` or `clevis luks unlock` activates it), and bind, regen and unbind write Clevis "
               "bindings as LUKS2 tokens only. `cryptsetup convert` refuses a header with luksmeta data. To convert: ";
    if (!slots.empty()) message += "`clevis luks unbind -d " + dev + " -s N` for each bound slot, ";
    message += "`luksmeta nuke -f -d " + dev + "`, `cryptsetup convert --type luks2 " + dev +
               "`, then bind again (luksforge bind or clevis luks bind)";
    return message;
}

}  // namespace luksforge::clevis::internal
