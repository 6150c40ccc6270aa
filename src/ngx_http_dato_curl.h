
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The curl bridge: one libcurl multi handle per worker, its sockets
 * turned into nginx connections and its timer into an nginx timer.  It
 * knows nginx events and libcurl, and nothing of DatoCMS.
 */


#ifndef _NGX_HTTP_DATO_CURL_H_INCLUDED_
#define _NGX_HTTP_DATO_CURL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>


/* "+12345678." before a host name must fit curl's 255 characters */
#define NGX_HTTP_DATO_CURL_NAME_MAX  240


typedef struct ngx_http_dato_curl_s  ngx_http_dato_curl_t;

/*
 * A host name that the bridge resolves with nginx's resolver before each
 * transfer to it (nginx's cache answers most at once, and asks again when
 * an answer is older than its validity); curl is then told where to
 * connect, and never resolves a name itself.  Per worker, in the caller's
 * memory: the last outcome is kept, so that a failure and a new address
 * are logged once.
 */
typedef struct {
    ngx_resolver_t              *resolver;
    ngx_msec_t                   timeout;
    ngx_str_t                    name;        /* lowercase */
    in_port_t                    port;

    /* of the addresses last found, see ngx_http_dato_curl_point() */
    uint32_t                     key;
    unsigned                     failed:1;
} ngx_http_dato_curl_host_t;

/*
 * libcurl's header stays out of this one, so that only the bridge and the
 * client see libcurl: an easy handle is passed as a void *, which is what
 * libcurl's CURL is, and a transfer's result as its CURLcode's value.
 *
 * Called once per transfer: when it ends (rc is curl's result, or
 * CURLE_COULDNT_RESOLVE_HOST when its host was not resolved), or with
 * CURLE_ABORTED_BY_CALLBACK when the bridge is destroyed first.  The
 * handle is no longer in the multi; the callee owns it again.
 */
typedef void (*ngx_http_dato_curl_done_pt)(void *data, void *easy,
    ngx_int_t rc);


ngx_http_dato_curl_t *ngx_http_dato_curl_create(ngx_log_t *log);
void ngx_http_dato_curl_destroy(ngx_http_dato_curl_t *bridge);
ngx_int_t ngx_http_dato_curl_start(ngx_http_dato_curl_t *bridge, void *easy,
    ngx_http_dato_curl_host_t *host, ngx_http_dato_curl_done_pt done,
    void *data);
void ngx_http_dato_curl_abort(ngx_http_dato_curl_t *bridge);


#endif /* _NGX_HTTP_DATO_CURL_H_INCLUDED_ */
