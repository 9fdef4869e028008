// Policy glue other subcommand groups call (bind --policy lives in clevis_commands.cpp).
#pragma once

#include <luksforge/clevis.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/secret.hpp>

#include <string>

namespace luksforge::cli {

// Bind IMAGE with the pin, servers, trust settings and keyslot PBKDF of the policy in `policy_file`.
// Refuses (FormatError) before writing anything when the policy is invalid, the volume does not meet it, or the
// token and its keyslot would not fit the volume's LUKS2 metadata.
clevis::BindResult bind_under_policy(const std::string& image, const std::string& policy_file,
                                     const SecretBuffer& existing_passphrase, const NetworkOptions& network,
                                     int slot, bool verify);

}  // namespace luksforge::cli
