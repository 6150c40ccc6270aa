#!/usr/bin/perl

# nginx built without OpenSSL (make test-nossl builds one, with the module
# built in): dato_webhook_signing_secret, whose HMAC is OpenSSL's, fails
# nginx -t with a message that says why; the rest of the module works.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use DatoTest;

my $nginx = $ENV{TEST_NGINX_NOSSL_BINARY};
plan skip_all => 'TEST_NGINX_NOSSL_BINARY is not set (make test-nossl)'
    unless $nginx && -x $nginx;

my $t = DatoTest->new(workers => 1, nginx => $nginx, no_module => 1);

my ($rc, $out) = $t->test_conf(http => <<'EOF2');
    dato_api_url http://127.0.0.1:%%PORT2%%;
    dato_api_token test-token;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /hook {
            dato_publish;
            dato_webhook_signing_secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw;
        }
    }
EOF2

isnt($rc, 0, 'no OpenSSL: a signing secret fails nginx -t');
like($out, qr/\[emerg\] "dato_webhook_signing_secret" directive needs nginx built with OpenSSL \(--with-http_ssl_module\) in /,
     'no OpenSSL: the message says why');
unlike($out, qr/MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw/, 'no OpenSSL: no secret in it');

($rc, $out) = $t->test_conf(http => <<'EOF2');
    dato_api_url http://127.0.0.1:%%PORT2%%;
    dato_api_token test-token;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /hook { dato_unpublish; dato_webhook_secret X-Secret s3; }
    }
EOF2

is($rc, 0, 'no OpenSSL: the rest of the module passes nginx -t') or diag $out;

done_testing;
