// tpm2-tss loaded on first use: see tss2_api.hpp.
#include "tpm2/tss2_api.hpp"

#include "util/dynamic_library.hpp"

namespace luksforge::detail {

namespace {

// tpm2-tss's libraries have kept ABI .so.0 since 2.0 (2018): RHEL 8's 2.3, Debian 12's 3.2 and later.
Tss2Api load_tss2() {
    const DynamicLibrary esys("libtss2-esys.so.0", "the tpm2 pin (tpm2-tss ESYS)");
    const DynamicLibrary mu("libtss2-mu.so.0", "the tpm2 pin (tpm2-tss marshalling)");
    const DynamicLibrary tctildr("libtss2-tctildr.so.0", "the tpm2 pin (tpm2-tss TCTI loader)");
    const DynamicLibrary rc("libtss2-rc.so.0", "the tpm2 pin (tpm2-tss response codes)");
    Tss2Api api{};
#define LUKSFORGE_BIND_ENTRY(library, symbol) library.bind(api.symbol, #symbol);
    LUKSFORGE_TSS2_ENTRY_POINTS(LUKSFORGE_BIND_ENTRY)
#undef LUKSFORGE_BIND_ENTRY
    return api;
}

}  // namespace

const Tss2Api& tss2() {
    static const Tss2Api api = load_tss2();
    return api;
}

}  // namespace luksforge::detail
