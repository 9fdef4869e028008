// libpq loaded on first use: see libpq_api.hpp.
#include "ledger/libpq_api.hpp"

#include "util/dynamic_library.hpp"

namespace luksforge::detail {

namespace {

LibpqApi load_libpq() {
    // libpq's ABI has been .so.5 since PostgreSQL 8.0 (2005).
    const DynamicLibrary library("libpq.so.5", "a PostgreSQL ledger");
    LibpqApi api{};
#define LUKSFORGE_BIND_ENTRY(member, symbol) library.bind(api.member, #symbol);
    LUKSFORGE_LIBPQ_ENTRY_POINTS(LUKSFORGE_BIND_ENTRY)
#undef LUKSFORGE_BIND_ENTRY
    return api;
}

}  // namespace

const LibpqApi& libpq() {
    static const LibpqApi api = load_libpq();
    return api;
}

}  // namespace luksforge::detail
