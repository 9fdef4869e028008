#include "luks_image.hpp"

#include <luksforge/luks.hpp>

#include <stdexcept>

namespace luksforge::test {

namespace {
constexpr std::uint64_t kMiB = 1ull << 20;
}

PassphraseImage::PassphraseImage(const std::string& passphrase) {
    make_sparse_file(path, 32 * kMiB);
    FormatOptions options;
    options.pbkdf = Pbkdf::pbkdf2_fast();
    Volume volume = Volume::format(path, options);
    if (volume.add_keyslot_by_volume_key(passphrase) != 0)
        throw std::runtime_error("the test image's passphrase did not go into keyslot 0");
    write_file(pass_file, passphrase);
}

std::string PassphraseImage::header() const { return read_file_bytes(path, 0, 16 * kMiB); }

}  // namespace luksforge::test
