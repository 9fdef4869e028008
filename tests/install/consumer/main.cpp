// Uses only the installed public headers: format a small image with a fresh volume key and inspect it.
#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/secret.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

int main() {
    namespace fs = std::filesystem;
    const fs::path image = fs::temp_directory_path() / ("luksforge-consumer-" + std::to_string(::getpid()) + ".img");
    try {
        const luksforge::SecretBuffer pass = luksforge::generate_passphrase();
        luksforge::Volume::ensure_file_size(image, 32u << 20);
        luksforge::FormatOptions options;
        options.pbkdf = luksforge::Pbkdf::pbkdf2_fast();
        {
            luksforge::Volume volume = luksforge::Volume::format(image, options);
            volume.add_keyslot_by_volume_key(pass.view());
        }
        const auto info = luksforge::Volume::open(image).inspect();
        fs::remove(image);
        if (info.fingerprint.size() != 64 || info.keyslots.size() != 1) return 1;
        std::printf("luksforge consumer ok %s\n", info.uuid.c_str());
        return 0;
    } catch (const luksforge::Error& e) {
        std::fprintf(stderr, "consumer: %s\n", e.what());
        fs::remove(image);
        return 1;
    }
}
