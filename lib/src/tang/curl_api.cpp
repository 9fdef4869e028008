// libcurl loaded on first use: see curl_api.hpp.
#include "tang/curl_api.hpp"

#include "util/dynamic_library.hpp"  // IWYU pragma: keep (not with LUKSFORGE_LINK_CURL)

namespace luksforge::detail {

namespace {

#if defined(LUKSFORGE_LINK_CURL)
// The token handler links libcurl as DT_NEEDED (token-plugin/CMakeLists.txt): initramfs builders copy a
// handler's libraries by what ldd lists, and one loaded behind their back would be missing at boot.
CurlApi load_curl() {
    CurlApi api{};
#define LUKSFORGE_LINK_ENTRY(member, symbol) api.member = &::symbol;
    LUKSFORGE_CURL_ENTRY_POINTS(LUKSFORGE_LINK_ENTRY)
#undef LUKSFORGE_LINK_ENTRY
    return api;
}
#else
CurlApi load_curl() {
    // libcurl's ABI has been .so.4 since 2006 (curl 7.16), on every distribution luksforge builds for.
    const DynamicLibrary library("libcurl.so.4", "talking to a Tang server (HTTP)");
    CurlApi api{};
#define LUKSFORGE_BIND_ENTRY(member, symbol) library.bind(api.member, #symbol);
    LUKSFORGE_CURL_ENTRY_POINTS(LUKSFORGE_BIND_ENTRY)
#undef LUKSFORGE_BIND_ENTRY
    return api;
}
#endif

}  // namespace

const CurlApi& curl() {
    static const CurlApi api = load_curl();
    return api;
}

}  // namespace luksforge::detail
