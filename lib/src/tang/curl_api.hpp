// Internal: libcurl's entry points, loaded on first use (util/dynamic_library.hpp says why). Only Tang
// exchanges use HTTP, so commands that never reach a Tang server never load libcurl and its ~30 libraries.
#pragma once

#include <curl/curl.h>

namespace luksforge::detail {

struct CurlApi {
    decltype(&::curl_global_init) global_init;
    decltype(&::curl_easy_init) easy_init;
    decltype(&::curl_easy_reset) easy_reset;
    decltype(&::curl_easy_cleanup) easy_cleanup;
    decltype(&::curl_easy_setopt) easy_setopt;
    decltype(&::curl_easy_perform) easy_perform;
    decltype(&::curl_easy_getinfo) easy_getinfo;
    decltype(&::curl_easy_strerror) easy_strerror;
    decltype(&::curl_slist_append) slist_append;
    decltype(&::curl_slist_free_all) slist_free_all;
};

// The table, loading libcurl.so.4 on the first call (thread-safe); throws luksforge::Error (ELIBACC) when it
// cannot, and tries again on the next call.
const CurlApi& curl();

}  // namespace luksforge::detail
