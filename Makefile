# ngx_http_dato_module: build against Debian's packaged nginx (nginx-dev).
#
#   make          build build/ngx_http_dato_module.so
#   make test     install what is missing, build, run the test suite
#   make test-poll  the core tests again, under nginx's poll event method
#   make run      install what is missing, build, run nginx in the foreground
#   make deb      build the Debian package libnginx-mod-http-dato
#   make fuzz     fuzz the payload parser; make sanitize, make valgrind:
#                 the test suite under ASan+UBSan, under valgrind

SHELL      := /bin/bash
NGX_SRC    ?= /usr/share/nginx/src
NGINX      ?= /usr/sbin/nginx
BUILD      := $(CURDIR)/build
SRCCOPY    := $(BUILD)/nginx-src
OBJS       := $(BUILD)/objs
MODULE     := $(BUILD)/ngx_http_dato_module.so
RUN_PORT   ?= 8080
MOCK_PORT  ?= 8081
CFLAGS_EXTRA ?=
LDFLAGS_EXTRA ?=

# what building and running need; the suite adds promtool and prometheus
# (t/15), openssl (t/11, t/12, t/16); make valgrind adds valgrind.  bench,
# fuzz and sanitize install their own extras (t/bench, t/fuzz, t/sanitize).
RUN_PACKAGES  := nginx nginx-dev libcurl4-openssl-dev libjansson-dev \
                 perl curl
TEST_PACKAGES := $(RUN_PACKAGES) prometheus openssl
SOURCES    := config ngx_http_dato_module.c $(wildcard src/*.c src/*.h)

.PHONY: all deps deps-run test test-poll test-nossl run clean deb test-deb test-src \
        valgrind fuzz sanitize bench

all: $(MODULE)

# Installs the packages the build and the tests need, only when one is
# missing, so that a fresh machine needs nothing but "make test"; deps-run
# only what building and running need.
deps:
	@sh t/install.sh $(TEST_PACKAGES)

deps-run:
	@sh t/install.sh $(RUN_PACKAGES)

# configure runs once per change of the addon's config file; "make
# modules" rebuilds only what changed.  The flags are the packaged ones
# (conf_flags, --with-compat) so that the packaged nginx loads the module.
# No -Werror here: nginx adds it for the compile, and in configure it would
# fail feature checks (pwrite) and make ngx_auto_config.h differ.
$(OBJS)/Makefile: config
	rm -rf $(SRCCOPY) $(OBJS)
	mkdir -p $(BUILD)
	cp -r $(NGX_SRC) $(SRCCOPY)
	cd $(SRCCOPY) && . ./conf_flags && ./configure \
	    --with-cc-opt="-g -O2 -fPIC -Wall $(CFLAGS_EXTRA)" \
	    --with-ld-opt="-fPIC $(LDFLAGS_EXTRA)" \
	    "$${NGX_CONF_FLAGS[@]}" \
	    --add-dynamic-module=$(CURDIR) --builddir=$(OBJS) \
	    > $(BUILD)/configure.log 2>&1 \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(OBJS)/Makefile $(SOURCES)
	$(MAKE) -s -f $(OBJS)/Makefile -C $(SRCCOPY) modules
	@# a rename, so that a running nginx keeps the file it has mapped
	cp $(OBJS)/ngx_http_dato_module.so $(MODULE).tmp
	mv -f $(MODULE).tmp $(MODULE)

test: deps
	$(MAKE) all
	prove -r t/

# The tests that drive curl's sockets, under poll instead of epoll: the curl
# bridge's connections must be right whatever the event method.  Debian's
# nginx has epoll only: t/pollbuild.sh builds one of the same version and
# flags with poll and select too, which loads the same module.
CORE_TESTS := t/03-batching.t t/05-faults.t t/06-lifecycle.t \
              t/07-ratelimit.t t/09-jobs.t t/12-tls.t t/13-scheduler.t \
              t/16-dns.t t/17-refused.t t/18-journal.t
POLL_NGINX := $(BUILD)/poll/nginx

test-poll: deps
	$(MAKE) all $(POLL_NGINX)
	TEST_NGINX_EVENTS=poll TEST_NGINX_BINARY=$(POLL_NGINX) \
	    prove $(CORE_TESTS)

$(POLL_NGINX): t/pollbuild.sh
	bash t/pollbuild.sh $(NGX_SRC)

# nginx without OpenSSL, the module built in: what a signing secret gets
# there (t/23-nossl.t); built anew each time, from the poll build's source
NOSSL_NGINX := $(BUILD)/nossl/nginx

test-nossl: deps $(POLL_NGINX)
	bash t/nosslbuild.sh
	TEST_NGINX_NOSSL_BINARY=$(NOSSL_NGINX) prove t/23-nossl.t

run: deps-run
	$(MAKE) all
	RUN_PORT=$(RUN_PORT) MOCK_PORT=$(MOCK_PORT) NGINX_BIN=$(NGINX) \
	    MODULE=$(MODULE) sh t/run.sh

# libFuzzer (clang, ASan, UBSan) on the payload parser, FUZZ_SECONDS long
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash t/fuzz/run.sh

# the suite with the module built with ASan and UBSan, in the packaged nginx
sanitize: deps
	bash t/sanitize/run.sh

# the suite with nginx under valgrind memcheck
valgrind: deps
	@sh t/install.sh valgrind
	$(MAKE) all
	TEST_NGINX_USE_VALGRIND=1 prove -r t/

# nginx built from a source tree, module dynamic and built in
test-src:
	sh t/srcbuild.sh

# benchmarks against nginx itself and the API's ceiling (t/bench/run.sh)
bench: deps-run
	$(MAKE) all
	bash t/bench/run.sh

# Debian package: build/deb/libnginx-mod-http-dato_<version>_<arch>.deb
deb:
	bash t/deb/build.sh

# builds, installs, tests and purges the package (root; changes the system)
test-deb:
	DATO_TEST_DEB=1 prove -v t/08-deb.t

clean:
	rm -rf $(BUILD)
