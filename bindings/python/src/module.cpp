// The `_luksforge` extension: one registration function per library area (see bindings.hpp). The package
// `luksforge` (luksforge/__init__.py) re-exports it.
#include "bindings.hpp"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>

namespace {

// What the CLI does in main(), at import (docs/hardening.md, "Core dumps"): in a Python program the secrets are
// held before the library ever sees them (passphrases arrive as bytes objects nobody can wipe), so the first
// moment luksforge can act is the import. Not dumpable: no core file and no ptrace by other users; the soft
// RLIMIT_CORE at 0 as well, the hard limit kept so that the program may raise it again for its own children.
// LUKSFORGE_ALLOW_CORE_DUMPS=1 in the environment before the import keeps both as they were (for debugging).
void disable_core_dumps() {
    const char* allow = std::getenv("LUKSFORGE_ALLOW_CORE_DUMPS");
    if (allow != nullptr && std::strcmp(allow, "1") == 0) return;
    rlimit limit{};
    if (::getrlimit(RLIMIT_CORE, &limit) == 0) {
        limit.rlim_cur = 0;
        ::setrlimit(RLIMIT_CORE, &limit);
    }
    ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

}  // namespace

PYBIND11_MODULE(_luksforge, m) {
    using namespace luksforge::python;
    disable_core_dumps();
#if PY_VERSION_HEX < 0x03070000
    // Python 3.6 (RHEL 8) creates the GIL only when a thread starts; until then acquiring it after a
    // gil_scoped_release (progress callbacks during re-key) waits forever. 3.7+ always has it.
    PyEval_InitThreads();
#endif
    m.doc() = "luksforge: NBDE-ready LUKS2 images — unique volume keys and Clevis (tang, sss) bindings.";
    m.attr("__version__") = LUKSFORGE_VERSION;
    register_errors(m);
    register_secrets(m);
    register_luks(m);
    register_pins(m);
    register_tang(m);
    register_clevis(m);
    register_policy(m);
    register_image(m);
    register_ledger(m);
    register_pipeline(m);
}
