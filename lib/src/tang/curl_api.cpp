// libcurl loaded on first use: see curl_api.hpp.
#include "tang/curl_api.hpp"

#include "util/dynamic_library.hpp"  // IWYU pragma: keep (not with LUKSFORGE_LINK_CURL)

namespace luksforge::detail {

namespace {

#if defined(LUKSFORGE_LINK_CURL)
// The token handler links libcurl as DT_NEEDED (token-plugin/CMakeLists.txt): initramfs builders copy a
// handler's libraries by what ldd lists, and one loaded behind their back would be missing at boot.
CurlApi load_curl() {
    return {&::curl_global_init, &::curl_easy_init,     &::curl_easy_reset,    &::curl_easy_cleanup,
            &::curl_easy_setopt, &::curl_easy_perform,  &::curl_easy_getinfo,  &::curl_easy_strerror,
            &::curl_slist_append, &::curl_slist_free_all};
}
#else
CurlApi load_curl() {
    // libcurl's ABI has been .so.4 since 2006 (curl 7.16), on every distribution luksforge builds for.
    static const DynamicLibrary library("libcurl.so.4", "talking to a Tang server (HTTP)");
    CurlApi api{};
    library.bind(api.global_init, "curl_global_init");
    library.bind(api.easy_init, "curl_easy_init");
    library.bind(api.easy_reset, "curl_easy_reset");
    library.bind(api.easy_cleanup, "curl_easy_cleanup");
    library.bind(api.easy_setopt, "curl_easy_setopt");
    library.bind(api.easy_perform, "curl_easy_perform");
    library.bind(api.easy_getinfo, "curl_easy_getinfo");
    library.bind(api.easy_strerror, "curl_easy_strerror");
    library.bind(api.slist_append, "curl_slist_append");
    library.bind(api.slist_free_all, "curl_slist_free_all");
    return api;
}
#endif

}  // namespace

const CurlApi& curl() {
    static const CurlApi api = load_curl();
    return api;
}

}  // namespace luksforge::detail
