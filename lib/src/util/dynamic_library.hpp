// Internal: a shared library loaded on first use (dlopen), the way systemd loads libcryptsetup and tpm2-tss.
//
// Why: libcurl, libpq and tpm2-tss bring about 35 shared libraries between them (Kerberos, LDAP, GnuTLS, SASL,
// nghttp2, ...). Linked as DT_NEEDED, every luksforge command and every `import luksforge` mapped and
// relocated all of them: an empty program linked against luksforge's libraries started in 9.1 ms, without
// these three in 4.4 ms (bench/README: bind spends most of its time outside the data it touches). Now only
// the code that talks to a Tang server, a PostgreSQL ledger or a TPM loads what it needs, once per process.
//
// Each area keeps its own table of typed entry points (tang/curl_api.hpp, ledger/libpq_api.hpp,
// tpm2/tss2_api.hpp), declared with decltype of the real prototypes, so the compiler still checks every call
// against the library's own header.
#pragma once

#include <string>
#include <string_view>

namespace luksforge::detail {

class DynamicLibrary {
public:
    // Loads `soname` (RTLD_NOW | RTLD_LOCAL). Throws luksforge::Error (ELIBACC) naming `purpose`, the soname
    // and the loader's reason when it is not installed or not loadable.
    DynamicLibrary(const char* soname, std::string_view purpose);
    // The library stays loaded for the life of the process (no dlclose), so an object is needed only while
    // the entry points are bound: the tables that point into it are process-wide, and libcurl and libpq keep
    // their own global state.
    ~DynamicLibrary() = default;
    DynamicLibrary(const DynamicLibrary&) = delete;
    DynamicLibrary& operator=(const DynamicLibrary&) = delete;

    // Sets `entry` to the library's `name`; throws like the constructor when the symbol is missing (a library
    // older than the one luksforge was built against).
    template <typename Fn>
    void bind(Fn*& entry, const char* name) const {
        entry = reinterpret_cast<Fn*>(symbol(name));
    }

private:
    void* symbol(const char* name) const;

    void* handle_ = nullptr;
    std::string soname_;
    std::string purpose_;
};

}  // namespace luksforge::detail
