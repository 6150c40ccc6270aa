
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <curl/curl.h>
#include <jansson.h>

#include "ngx_http_dato.h"
#include "ngx_http_dato_client.h"


/* answers are small JSON documents; anything past this is not read */
#define NGX_HTTP_DATO_ANSWER_MAX  16384

/* how often, in seconds, refusals for want of the API host are logged */
#define NGX_HTTP_DATO_UNRESOLVED_LOG  10


typedef struct {
    ngx_http_dato_client_done_pt    done;
    void                           *data;
    ngx_log_t                      *log;

    struct curl_slist              *headers;

    /* curl reads CURLOPT_RESOLVE's list during the transfer: kept till end */
    struct curl_slist              *resolve;
    char                           *body;
    unsigned                        job:1;

    ngx_http_dato_client_result_t   result;

    size_t                          len;
    char                            answer[NGX_HTTP_DATO_ANSWER_MAX];
} ngx_http_dato_client_call_t;


static char *ngx_http_dato_client_split(ngx_str_t *url, ngx_str_t *host,
    ngx_uint_t *https);
static char *ngx_http_dato_client_strings(ngx_conf_t *cf,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *url, ngx_str_t *token);
static char *ngx_http_dato_client_host(ngx_conf_t *cf, ngx_url_t *u,
    ngx_str_t *url, ngx_str_t *host, ngx_uint_t https);
static char *ngx_http_dato_client_resolver(ngx_conf_t *cf,
    ngx_http_dato_client_conf_t *cc, ngx_url_t *u, ngx_resolver_t *resolver,
    ngx_msec_t resolver_timeout);
static char *ngx_http_dato_client_resolve(ngx_conf_t *cf,
    ngx_http_dato_client_conf_t *cc, ngx_url_t *u, ngx_str_t *url);
static size_t ngx_http_dato_client_write(char *ptr, size_t size,
    size_t nmemb, void *userdata);
static size_t ngx_http_dato_client_header(char *ptr, size_t size,
    size_t nmemb, void *userdata);
static void ngx_http_dato_client_location(ngx_http_dato_client_result_t *res,
    u_char *p, u_char *last);
static void ngx_http_dato_client_done(void *data, void *easy, ngx_int_t rc);
static void ngx_http_dato_client_read(ngx_http_dato_client_call_t *call);
static void ngx_http_dato_client_set(ngx_str_t *dst, u_char *buf,
    size_t size, const char *src, size_t len);
static char *ngx_http_dato_client_body(ngx_http_dato_client_conf_t *cc,
    ngx_http_dato_id_t *ids, ngx_uint_t n);
static ngx_http_dato_client_call_t *ngx_http_dato_client_call(
    ngx_http_dato_client_done_pt done, void *data, ngx_log_t *log);
static ngx_int_t ngx_http_dato_client_start(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *env, const char *url,
    ngx_http_dato_client_call_t *call);
static void ngx_http_dato_client_job_id(ngx_http_dato_client_result_t *res,
    json_t *v);
static void ngx_http_dato_client_error(ngx_http_dato_client_result_t *res,
    json_t *errors, ngx_uint_t guess);
static void ngx_http_dato_client_job_read(ngx_http_dato_client_result_t *res,
    json_t *data);
static ngx_uint_t ngx_http_dato_client_count(json_t *v, ngx_int_t max);
static void ngx_http_dato_client_free(ngx_http_dato_client_call_t *call);
static int ngx_http_dato_client_no_dns(void *state, void *reserved,
    void *data);


static ngx_str_t  ngx_http_dato_client_headers[] = {
    ngx_string("Accept: application/json"),
    ngx_string("X-Api-Version: 3"),
    ngx_string("User-Agent: " NGX_HTTP_DATO_USER_AGENT),
    ngx_string("Expect:"),
    ngx_null_string
};


/*
 * Everything a call needs is made once, here: the URL, the Authorization
 * header, and how the API host is found.  A worker never waits on DNS:
 * with a "resolver", nginx's resolver finds the host before each call, as
 * for proxy_pass with variables; without one, the host is resolved now,
 * as proxy_pass does with a static host.
 */

char *
ngx_http_dato_client_conf_init(ngx_conf_t *cf, ngx_http_dato_client_conf_t *cc,
    ngx_str_t *api_url, ngx_str_t *token, ngx_resolver_t *resolver,
    ngx_msec_t resolver_timeout)
{
    char        *rv;
    ngx_str_t    url, host;
    ngx_url_t    u;
    ngx_uint_t   https;

    url = *api_url;

    rv = ngx_http_dato_client_split(&url, &host, &https);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rv = ngx_http_dato_client_strings(cf, cc, &url, token);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rv = ngx_http_dato_client_host(cf, &u, &url, &host, https);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    ngx_str_null(&cc->resolve);

    /* an IP literal needs no name resolution */

    if (u.host.len == 0 || u.host.data[0] == '['
        || ngx_inet_addr(u.host.data, u.host.len) != INADDR_NONE)
    {
        return NGX_CONF_OK;
    }

    /* the "resolver" of the location; without one nginx has a dummy */

    if (resolver && resolver->connections.nelts) {
        return ngx_http_dato_client_resolver(cf, cc, &u, resolver,
                                             resolver_timeout);
    }

    return ngx_http_dato_client_resolve(cf, cc, &u, &url);
}


/*
 * dato_api_url without its trailing slashes, and where its host (with
 * the port) is in it; the rest of its checks are ngx_parse_url()'s
 */

static char *
ngx_http_dato_client_split(ngx_str_t *url, ngx_str_t *host, ngx_uint_t *https)
{
    u_char  *p, *last;

    while (url->len && url->data[url->len - 1] == '/') {
        url->len--;
    }

    if (url->len > 8
        && ngx_strncasecmp(url->data, (u_char *) "https://", 8) == 0)
    {
        *https = 1;
        host->data = url->data + 8;

    } else if (url->len > 7
               && ngx_strncasecmp(url->data, (u_char *) "http://", 7) == 0)
    {
        *https = 0;
        host->data = url->data + 7;

    } else {
        return "must start with \"http://\" or \"https://\"";
    }

    last = url->data + url->len;

    for (p = host->data; p < last; p++) {
        if (*p == '/' || *p == '?' || *p == '#') {
            break;
        }

        if (*p <= ' ' || *p == '@') {
            return "has an invalid host";
        }
    }

    if (p < last && *p != '/') {
        return "must not have a query string or a fragment";
    }

    host->len = p - host->data;

    return NGX_CONF_OK;
}


/* the bulk action's URL and the Authorization header, NUL-terminated */

static char *
ngx_http_dato_client_strings(ngx_conf_t *cf, ngx_http_dato_client_conf_t *cc,
    ngx_str_t *url, ngx_str_t *token)
{
    u_char  *p;
    size_t   len;

    len = url->len + sizeof("/items/bulk/") + cc->action->name.len;

    cc->bulk_url.data = ngx_pnalloc(cf->pool, len);
    if (cc->bulk_url.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_sprintf(cc->bulk_url.data, "%V/items/bulk/%V%Z", url,
                    &cc->action->name);
    cc->bulk_url.len = p - cc->bulk_url.data - 1;

    cc->base_url = *url;

    /* the token was checked at its directive: one header line, no spaces */

    len = sizeof("Authorization: Bearer ") + token->len;

    cc->authorization.data = ngx_pnalloc(cf->pool, len);
    if (cc->authorization.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_sprintf(cc->authorization.data, "Authorization: Bearer %V%Z",
                    token);
    cc->authorization.len = p - cc->authorization.data - 1;

    return NGX_CONF_OK;
}


/* the host and port, not resolved */

static char *
ngx_http_dato_client_host(ngx_conf_t *cf, ngx_url_t *u, ngx_str_t *url,
    ngx_str_t *host, ngx_uint_t https)
{
    ngx_memzero(u, sizeof(ngx_url_t));

    u->url = *host;
    u->default_port = https ? 443 : 80;
    u->no_resolve = 1;

    if (ngx_parse_url(cf->pool, u) != NGX_OK) {
        if (u->err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in dato_api_url \"%V\"", u->err, url);
        }

        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* a host name for nginx's resolver to find before each call */

static char *
ngx_http_dato_client_resolver(ngx_conf_t *cf, ngx_http_dato_client_conf_t *cc,
    ngx_url_t *u, ngx_resolver_t *resolver, ngx_msec_t resolver_timeout)
{
    if (u->host.len > NGX_HTTP_DATO_CURL_NAME_MAX) {
        return "has a host name too long";
    }

    /* lowercase, as nginx's resolver would make it in place */

    cc->host.name.data = ngx_pnalloc(cf->pool, u->host.len);
    if (cc->host.name.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_strlow(cc->host.name.data, u->host.data, u->host.len);
    cc->host.name.len = u->host.len;

    cc->host.port = u->port;
    cc->host.resolver = resolver;

    /* the call's timeout bounds its resolution too */
    cc->host.timeout = ngx_min(resolver_timeout, cc->timeout);

    return NGX_CONF_OK;
}


/*
 * A host name resolved now, into the CURLOPT_RESOLVE entry that every call
 * gives curl ("HOST:PORT:ADDR,ADDR").  A host not found now is not worth
 * stopping nginx for, and every site it serves: the location refuses
 * webhooks until a reload.
 */

static char *
ngx_http_dato_client_resolve(ngx_conf_t *cf, ngx_http_dato_client_conf_t *cc,
    ngx_url_t *u, ngx_str_t *url)
{
    u_char      *p, text[NGX_SOCKADDR_STRLEN];
    size_t       len, size;
    ngx_uint_t   i;

    if (ngx_inet_resolve_host(cf->pool, u) != NGX_OK || u->naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "host not found in dato_api_url \"%V\": webhooks "
                           "are answered 503 until a reload finds it; "
                           "a \"resolver\" would look it up at run time",
                           url);

        cc->unresolved = 1;
        return NGX_CONF_OK;
    }

    size = u->host.len + sizeof(":65535:")
           + u->naddrs * (NGX_SOCKADDR_STRLEN + 3);

    cc->resolve.data = ngx_pnalloc(cf->pool, size);
    if (cc->resolve.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_sprintf(cc->resolve.data, "%V:%d:", &u->host, (int) u->port);

    for (i = 0; i < u->naddrs; i++) {
        len = ngx_sock_ntop(u->addrs[i].sockaddr, u->addrs[i].socklen, text,
                            NGX_SOCKADDR_STRLEN, 0);

        if (i) {
            *p++ = ',';
        }

        if (u->addrs[i].sockaddr->sa_family == AF_INET6) {
            p = ngx_sprintf(p, "[%*s]", len, text);

        } else {
            p = ngx_cpymem(p, text, len);
        }
    }

    *p = '\0';
    cc->resolve.len = p - cc->resolve.data;

    return NGX_CONF_OK;
}


/*
 * A host that was not found when the configuration was read, and that no
 * resolver looks up later: no call can be made until a reload finds it.
 * Said at error level, but not for every webhook.
 */

ngx_int_t
ngx_http_dato_client_ready(ngx_http_dato_client_conf_t *cc, ngx_log_t *log)
{
    if (!cc->unresolved) {
        return NGX_OK;
    }

    if (ngx_time() - cc->unresolved_logged >= NGX_HTTP_DATO_UNRESOLVED_LOG) {
        cc->unresolved_logged = ngx_time();

        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "dato: the host of dato_api_url \"%V\" was not found "
                      "when the configuration was read: webhooks are "
                      "answered 503 until a reload finds it",
                      &cc->base_url);
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_dato_client_bulk(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *env, ngx_http_dato_id_t *ids,
    ngx_uint_t n, ngx_http_dato_client_done_pt done, void *data,
    ngx_log_t *log)
{
    ngx_int_t                     rc;
    ngx_http_dato_client_call_t  *call;

    call = ngx_http_dato_client_call(done, data, log);
    if (call == NULL) {
        return NGX_ERROR;
    }

    call->body = ngx_http_dato_client_body(cc, ids, n);
    if (call->body == NULL) {
        ngx_http_dato_client_free(call);
        return NGX_ERROR;
    }

    rc = ngx_http_dato_client_start(bridge, cc, env,
                                    (char *) cc->bulk_url.data, call);

    if (rc != NGX_OK) {
        ngx_http_dato_client_free(call);
    }

    return rc;
}


/* GET /job-results/ID: 404 while the job runs, 200 with its result */

ngx_int_t
ngx_http_dato_client_job(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *env, ngx_str_t *job,
    ngx_http_dato_client_done_pt done, void *data, ngx_log_t *log)
{
    u_char                       *url;
    ngx_int_t                     rc;
    ngx_http_dato_client_call_t  *call;

    call = ngx_http_dato_client_call(done, data, log);
    if (call == NULL) {
        return NGX_ERROR;
    }

    call->job = 1;

    url = ngx_alloc(cc->base_url.len + sizeof("/job-results/") + job->len,
                    log);
    if (url == NULL) {
        ngx_http_dato_client_free(call);
        return NGX_ERROR;
    }

    (void) ngx_sprintf(url, "%V/job-results/%V%Z", &cc->base_url, job);

    rc = ngx_http_dato_client_start(bridge, cc, env, (char *) url, call);

    /* curl has copied the URL */
    ngx_free(url);

    if (rc != NGX_OK) {
        ngx_http_dato_client_free(call);
    }

    return rc;
}


static ngx_http_dato_client_call_t *
ngx_http_dato_client_call(ngx_http_dato_client_done_pt done, void *data,
    ngx_log_t *log)
{
    ngx_http_dato_client_call_t  *call;

    call = ngx_alloc(sizeof(ngx_http_dato_client_call_t), log);
    if (call == NULL) {
        return NULL;
    }

    /* the answer buffer needs no zeroing: its length is */

    ngx_memzero(call, offsetof(ngx_http_dato_client_call_t, answer));

    call->done = done;
    call->data = data;
    call->log = log;

    call->result.rate_limit = -1;
    call->result.rate_remaining = -1;
    call->result.rate_reset = -1;

    return call;
}


static ngx_int_t
ngx_http_dato_client_start(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_client_conf_t *cc, ngx_str_t *env, const char *url,
    ngx_http_dato_client_call_t *call)
{
    u_char              line[NGX_HTTP_DATO_ENV_MAX_LEN + 32];
    CURL               *easy;
    ngx_int_t           rc;
    ngx_str_t          *h;
    struct curl_slist  *list;

    list = curl_slist_append(NULL, (char *) cc->authorization.data);
    if (list == NULL) {
        return NGX_ERROR;
    }

    call->headers = list;

    for (h = ngx_http_dato_client_headers; h->len; h++) {
        list = curl_slist_append(call->headers, (char *) h->data);
        if (list == NULL) {
            return NGX_ERROR;
        }
    }

    if (call->body) {
        list = curl_slist_append(call->headers,
                                 "Content-Type: application/vnd.api+json");
        if (list == NULL) {
            return NGX_ERROR;
        }
    }

    if (env && env->len) {
        ngx_sprintf(line, "X-Environment: %V%Z", env);

        list = curl_slist_append(call->headers, (char *) line);
        if (list == NULL) {
            return NGX_ERROR;
        }
    }

    easy = curl_easy_init();
    if (easy == NULL) {
        return NGX_ERROR;
    }

    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, call->headers);

    if (call->body) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, call->body);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE,
                         (long) strlen(call->body));
    }

    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, ngx_http_dato_client_write);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION,
                     ngx_http_dato_client_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, call);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) cc->timeout);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);

    if (cc->ca_file.len) {
        curl_easy_setopt(easy, CURLOPT_CAINFO, cc->ca_file.data);
    }

    if (cc->resolve.len) {

        /* curl copies the entry into its DNS cache, where it never expires */

        call->resolve = curl_slist_append(NULL, (char *) cc->resolve.data);
        if (call->resolve == NULL) {
            curl_easy_cleanup(easy);
            return NGX_ERROR;
        }

        curl_easy_setopt(easy, CURLOPT_RESOLVE, call->resolve);
    }

    if (cc->resolve.len || cc->host.resolver) {

        /*
         * every name curl needs is in its cache: one that is not would
         * have curl resolve it itself, blocking or in a thread
         */

        curl_easy_setopt(easy, CURLOPT_RESOLVER_START_FUNCTION,
                         ngx_http_dato_client_no_dns);
    }

    rc = ngx_http_dato_curl_start(bridge, easy,
                                  cc->host.resolver ? &cc->host : NULL,
                                  ngx_http_dato_client_done, call);

    if (rc != NGX_OK) {
        curl_easy_cleanup(easy);
    }

    return rc;
}


static size_t
ngx_http_dato_client_write(char *ptr, size_t size, size_t nmemb,
    void *userdata)
{
    ngx_http_dato_client_call_t  *call = userdata;

    size_t  n;

    n = size * nmemb;

    if (call->len < NGX_HTTP_DATO_ANSWER_MAX) {
        ngx_memcpy(call->answer + call->len, ptr,
                   ngx_min(n, NGX_HTTP_DATO_ANSWER_MAX - call->len));
        call->len += ngx_min(n, NGX_HTTP_DATO_ANSWER_MAX - call->len);
    }

    return n;
}


/* the X-RateLimit-* headers, on every answer */

static size_t
ngx_http_dato_client_header(char *ptr, size_t size, size_t nmemb,
    void *userdata)
{
    ngx_http_dato_client_call_t  *call = userdata;

    size_t                          n;
    u_char                         *p, *last;
    ngx_int_t                      *v;
    ngx_http_dato_client_result_t  *res;

    n = size * nmemb;
    res = &call->result;

    if (n > sizeof("Location:") - 1
        && ngx_strncasecmp((u_char *) ptr, (u_char *) "Location:", 9) == 0)
    {
        ngx_http_dato_client_location(res, (u_char *) ptr + 9,
                                      (u_char *) ptr + n);
        return n;
    }

    if (n < sizeof("X-RateLimit-Limit:") - 1
        || ngx_strncasecmp((u_char *) ptr, (u_char *) "X-RateLimit-", 12)
           != 0)
    {
        return n;
    }

    p = (u_char *) ptr + 12;
    last = (u_char *) ptr + n;

    if (ngx_strncasecmp(p, (u_char *) "Limit:", 6) == 0) {
        v = &res->rate_limit;
        p += 6;

    } else if (last - p > 10
               && ngx_strncasecmp(p, (u_char *) "Remaining:", 10) == 0)
    {
        v = &res->rate_remaining;
        p += 10;

    } else if (ngx_strncasecmp(p, (u_char *) "Reset:", 6) == 0) {
        v = &res->rate_reset;
        p += 6;

    } else {
        return n;
    }

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == '\r' || last[-1] == '\n'
                        || last[-1] == ' ' || last[-1] == '\t'))
    {
        last--;
    }

    /* ngx_atoi() takes digits only and refuses what would overflow */

    *v = (last > p) ? ngx_atoi(p, last - p) : NGX_ERROR;

    if (*v == NGX_ERROR) {
        *v = -1;
    }

    return n;
}


/* a redirect's target host, for the log: "https://host/..." -> "host" */

static void
ngx_http_dato_client_location(ngx_http_dato_client_result_t *res, u_char *p,
    u_char *last)
{
    u_char  *host;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    host = ngx_strlcasestrn(p, last, (u_char *) "://", 3 - 1);
    host = host ? host + 3 : p;

    for (p = host; p < last; p++) {
        if (*p == '/' || *p == '?' || *p == '#' || *p <= ' ') {
            break;
        }
    }

    ngx_http_dato_client_set(&res->details, res->details_buf,
                             NGX_HTTP_DATO_DETAILS_LEN, (char *) host,
                             p - host);
}


static void
ngx_http_dato_client_done(void *data, void *easy, ngx_int_t rc)
{
    ngx_http_dato_client_call_t  *call = data;

    long         status;
    const char  *reason;

    status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);

    if (rc != CURLE_OK) {
        reason = curl_easy_strerror((CURLcode) rc);

        call->result.status = 0;
        /*
         * the bridge ends transfers so when the worker exits; curl also
         * does when its socket callback failed (no free connection), and
         * then the call is only a failure, retried
         */

        call->result.outcome = (rc == CURLE_ABORTED_BY_CALLBACK
                                && (ngx_exiting || ngx_terminate || ngx_quit))
                               ? NGX_HTTP_DATO_CLIENT_ABORTED
                               : NGX_HTTP_DATO_CLIENT_FAILED;

        /* a peer that fails verification will fail it again: no retries */

        switch (rc) {
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
            call->result.transient = 0;
            break;

        default:
            call->result.transient = 1;
        }

        ngx_http_dato_client_set(&call->result.code, call->result.code_buf,
                                 NGX_HTTP_DATO_CODE_LEN, reason,
                                 ngx_strlen(reason));

    } else {
        call->result.status = status;
        ngx_http_dato_client_read(call);
    }

    call->done(call->data, &call->result);

    ngx_http_dato_client_free(call);
}


/*
 * 202 {"data":{"type":"job","id":"4235"}}, or an error:
 * {"data":[{"type":"api_error","attributes":{"code":...,"transient":...}}]}
 */

static void
ngx_http_dato_client_read(ngx_http_dato_client_call_t *call)
{
    json_t                         *root, *data;
    ngx_http_dato_client_result_t  *res;

    res = &call->result;

    root = json_loadb(call->answer, call->len, 0, NULL);
    data = json_object_get(root, "data");

    if (res->status >= 200 && res->status < 300) {
        if (json_is_array(data)) {
            data = json_array_get(data, 0);
        }

        if (call->job) {
            ngx_http_dato_client_job_read(res, data);

        } else {
            ngx_http_dato_client_job_id(res, json_object_get(data, "id"));
        }

    } else if (res->status >= 300 && res->status < 400) {

        /* never followed: the Location header's host is in res->details */

        ngx_http_dato_client_set(&res->code, res->code_buf,
                                 NGX_HTTP_DATO_CODE_LEN, "REDIRECT",
                                 sizeof("REDIRECT") - 1);

    } else if (!(call->job && res->status == 404)) {

        /* a poll's 404 is the usual answer while the job runs */

        ngx_http_dato_client_error(res, data, 1);
    }

    if (root) {
        json_decref(root);
    }
}


/*
 * A job ID goes into a URL path and into answers: one that is too long or
 * not made of ID characters is refused whole, never cut and used.
 */

static void
ngx_http_dato_client_job_id(ngx_http_dato_client_result_t *res, json_t *v)
{
    u_char       ch;
    size_t       i, len;
    const char  *id;

    if (!json_is_string(v)) {
        return;
    }

    id = json_string_value(v);
    len = json_string_length(v);

    if (len == 0 || len > NGX_HTTP_DATO_JOB_LEN) {
        res->bad_job = 1;
        return;
    }

    for (i = 0; i < len; i++) {
        ch = id[i];

        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z')
              || (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '_'))
        {
            res->bad_job = 1;
            return;
        }
    }

    ngx_memcpy(res->job_buf, id, len);
    res->job_id.data = res->job_buf;
    res->job_id.len = len;
}


/*
 * DatoCMS's errors, [{"type":"api_error","attributes":{"code":...,
 * "transient":true,"details":{...}}}], in an answer or in a job's payload.
 * Anything else is not DatoCMS's answer (a proxy's error page, an empty
 * body): transient when "guess" is set.
 */

static void
ngx_http_dato_client_error(ngx_http_dato_client_result_t *res,
    json_t *errors, ngx_uint_t guess)
{
    char    *text;
    json_t  *attrs, *v;

    attrs = json_object_get(json_array_get(errors, 0), "attributes");
    v = json_object_get(attrs, "code");

    if (!json_is_string(v)) {
        if (guess) {
            ngx_http_dato_client_set(&res->code, res->code_buf,
                                     NGX_HTTP_DATO_CODE_LEN,
                                     "NON_JSON_ANSWER",
                                     sizeof("NON_JSON_ANSWER") - 1);
            res->transient = 1;
        }

        return;
    }

    ngx_http_dato_client_set(&res->code, res->code_buf,
                             NGX_HTTP_DATO_CODE_LEN, json_string_value(v),
                             json_string_length(v));

    res->transient = json_is_true(json_object_get(attrs, "transient"));

    v = json_object_get(attrs, "details");

    if (v == NULL) {
        return;
    }

    text = json_dumps(v, JSON_COMPACT|JSON_ENCODE_ANY);

    if (text) {
        ngx_http_dato_client_set(&res->details, res->details_buf,
                                 NGX_HTTP_DATO_DETAILS_LEN, text,
                                 ngx_strlen(text));
        free(text);
    }
}


/*
 * {"data":{"type":"job_result","id":"4235","attributes":{"status":200,
 * "payload":{"data":[],"meta":{"successful":20,"failed":0}}}}}; the
 * numbers are clamped here to what they can mean, and to the batch's
 * records by the batcher
 */

static void
ngx_http_dato_client_job_read(ngx_http_dato_client_result_t *res,
    json_t *data)
{
    json_t  *attrs, *payload, *meta, *v;

    attrs = json_object_get(data, "attributes");
    payload = json_object_get(attrs, "payload");
    meta = json_object_get(payload, "meta");

    /* an answer without a status is taken as a failed job, not a crash */

    v = json_object_get(attrs, "status");
    res->job_status = ngx_http_dato_client_count(v, 999);

    v = json_object_get(meta, "successful");
    res->successful = ngx_http_dato_client_count(v, NGX_MAX_INT_T_VALUE);

    v = json_object_get(meta, "failed");
    res->failed = ngx_http_dato_client_count(v, NGX_MAX_INT_T_VALUE);

    if (res->job_status < 200 || res->job_status > 299) {
        ngx_http_dato_client_error(res, json_object_get(payload, "data"), 0);
    }
}


/* a JSON integer in 0..max, or 0 */

static ngx_uint_t
ngx_http_dato_client_count(json_t *v, ngx_int_t max)
{
    json_int_t  n;

    if (!json_is_integer(v)) {
        return 0;
    }

    n = json_integer_value(v);

    return n < 0 ? 0 : (n > max ? (ngx_uint_t) max : (ngx_uint_t) n);
}


/* copies what the API said, keeping only printable ASCII for the logs */

static void
ngx_http_dato_client_set(ngx_str_t *dst, u_char *buf, size_t size,
    const char *src, size_t len)
{
    size_t  i;

    len = ngx_min(len, size);

    for (i = 0; i < len; i++) {
        buf[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
    }

    dst->data = buf;
    dst->len = len;
}


/* {"data":{"type":"item_bulk_..._operation", ["attributes":...,] ...}} */

static char *
ngx_http_dato_client_body(ngx_http_dato_client_conf_t *cc,
    ngx_http_dato_id_t *ids, ngx_uint_t n)
{
    char        *body;
    json_t      *root, *items, *item;
    ngx_uint_t   i;

    items = json_array();
    if (items == NULL) {
        return NULL;
    }

    for (i = 0; i < n; i++) {
        item = json_pack("{s:s, s:s}", "type", "item",
                         "id", (char *) ids[i].data);

        if (json_array_append_new(items, item) != 0) {
            json_decref(items);
            return NULL;
        }
    }

    root = json_pack("{s:{s:s, s:{s:{s:o}}}}",
                     "data",
                     "type", cc->action->type,
                     "relationships",
                     "items",
                     "data", items);

    if (root == NULL) {
        return NULL;
    }

    /* the stage was checked at its directive: a plain word */

    if (cc->stage.len
        && json_object_set_new(json_object_get(root, "data"), "attributes",
                               json_pack("{s:s#}", "stage",
                                         (char *) cc->stage.data,
                                         (int) cc->stage.len))
           != 0)
    {
        json_decref(root);
        return NULL;
    }

    body = json_dumps(root, JSON_COMPACT);
    json_decref(root);

    return body;
}


static void
ngx_http_dato_client_free(ngx_http_dato_client_call_t *call)
{
    if (call->headers) {
        curl_slist_free_all(call->headers);
    }

    if (call->resolve) {
        curl_slist_free_all(call->resolve);
    }

    if (call->body) {
        free(call->body);
    }

    ngx_free(call);
}


static int
ngx_http_dato_client_no_dns(void *state, void *reserved, void *data)
{
    return 1;
}
