// Up front for seal and stamp: does their order of operations (one Clevis token at a time) fit the volume's
// LUKS2 metadata? Measured on the real header with a real token of the binding (a throw-away passphrase
// encrypted to the same servers), and refused — saying what is too big — before anything is written.
#include "pipeline/pipeline_internal.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>

namespace luksforge::detail {

namespace {

// How many Tang servers the binding names (sss children, nested or not).
std::size_t tang_servers(const json_t* pin_config, const std::string& pin, int depth = 0) {
    if (pin == "tang") return 1;
    if (pin != "sss" || depth > 8) return 0;
    std::size_t n = 0;
    const char* child_pin = nullptr;
    json_t* list = nullptr;
    json_object_foreach(json_object_get(pin_config, "pins"), child_pin, list) {
        std::size_t i = 0;
        json_t* child = nullptr;
        json_array_foreach(list, i, child) n += tang_servers(child, child_pin, depth + 1);
    }
    return n;
}

}  // namespace

void require_header_room(const Volume& volume, const PinBinding& binding, const PinOptions& pin_options,
                         PipelineSteps steps, const std::string& what) {
    // 40 random bytes as base64url, as every binding's passphrase: the token's size is exact.
    const SecretBuffer dummy = base64url_encode(random_secret(40).bytes());
    const std::string jwe = clevis_encrypt(binding.pin, binding.config_json, dummy.bytes(), pin_options);
    steps.new_token_bytes = clevis::token_json(31, jwe).size();
    const HeaderFit fit = volume_header_fit(volume, steps);
    if (fit.fits()) return;

    JsonPtr config = json_parse(binding.config_json, "pin config");
    const std::size_t servers = tang_servers(config.get(), binding.pin);
    std::string message = what + " does not fit the LUKS2 metadata of " + volume.path().string() + ": with a " +
                          std::to_string(steps.new_token_bytes) + "-byte clevis token for " + std::to_string(servers) +
                          " Tang server" + (servers == 1 ? "" : "s") + " it needs up to " + std::to_string(fit.needed) +
                          " of " + std::to_string(fit.available) + " bytes of JSON";
    if (servers >= 2) {
        // Each server's child JWE adds about the same to a token; the token that dominates the peak is the one
        // already in the header (the %post binding, the base's) when there is one, else the new one.
        const std::size_t scaled = steps.replaced_token_bytes ? steps.replaced_token_bytes : steps.new_token_bytes;
        const std::size_t per_server = scaled / servers;
        const std::size_t rest = fit.needed > scaled ? fit.needed - scaled : 0;
        std::size_t most = 0;
        while (most < 256 && rest + (most + 1) * per_server <= fit.available) ++most;
        message += "; at most " + std::to_string(most) + " such servers fit";
    }
    message += "; nothing was written (anaconda and `cryptsetup luksFormat` make 16 KiB of metadata; `luksforge "
               "format --policy` reserves enough)";
    throw FormatError(message);
}

}  // namespace luksforge::detail
