// The kickstart templates of lorax-templates/kickstarts/, compiled into the CLI (generated
// kickstart_templates.cpp, see cli/CMakeLists.txt).
#pragma once

#include <optional>
#include <string_view>

namespace luksforge::cli {

// "lmc-make-disk" or "virt-install"; nullopt for another name.
std::optional<std::string_view> builtin_kickstart_template(std::string_view kind);

}  // namespace luksforge::cli
