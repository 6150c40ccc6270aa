#!/usr/bin/perl

# Configuration checks of ngx_http_dato_module: "nginx -t" accepts what the
# spec allows and refuses the rest with a message naming the problem; and a
# token read from dato_api_token_file is what the API receives.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use DatoTest;

my $t = DatoTest->new(workers => 1);

# the API address is never contacted by "nginx -t"; an IP literal needs no
# resolver (the default host is not resolvable without a network)
my $API = 'http://127.0.0.1:%%PORT2%%';

# a server with one location; $loc goes inside it, $http at http{} level,
# $srv at server{} level
sub conf {
    my (%a) = @_;
    my $http = $a{http} // '';
    my $srv  = $a{srv} // '';
    my $loc  = $a{loc} // '';
    return <<"EOF";
    $http
    server {
        listen 127.0.0.1:%%PORT%%;
        $srv
        location /hook {
            $loc
        }
    }
EOF
}

sub check_ok {
    my ($name, %a) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($rc, $out) = $t->test_conf(http => conf(%a));
    is($rc, 0, "$name: nginx -t passes") or diag $out;
    like($out, qr/test is successful/, "$name: nginx -t says successful");
}

sub check_fail {
    my ($name, $re, %a) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($rc, $out) = $t->test_conf(http => conf(%a));
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\]/, "$name: an [emerg] message") or diag $out;
    like($out, $re, "$name: message matches $re") or diag $out;
}

my $base = "dato_api_url $API; dato_api_token cfg-token;";

# --------------------------------------------------------------- tokens --

check_ok('minimal', loc => "dato_publish; $base");

check_fail('dato_publish without a token', qr/dato_api_token/,
           loc => "dato_publish; dato_api_url $API;");

check_ok('token inherited from http{}',
         http => "dato_api_token http-level-token; dato_api_url $API;",
         loc => 'dato_publish;');

check_ok('token inherited from server{}',
         srv => "dato_api_token srv-level-token; dato_api_url $API;",
         loc => 'dato_publish;');

$t->write_file('token.good', "file-token-abc\n");
check_ok('dato_api_token_file with token + newline',
         loc => "dato_publish; dato_api_url $API;"
                . " dato_api_token_file %%TMP%%/token.good;");

check_fail('dato_api_token_file missing', qr/token\.missing/,
           loc => "dato_publish; dato_api_url $API;"
                  . " dato_api_token_file %%TMP%%/token.missing;");

$t->write_file('token.empty', '');
check_fail('dato_api_token_file empty', qr/empty/,
           loc => "dato_publish; dato_api_url $API;"
                  . " dato_api_token_file %%TMP%%/token.empty;");

$t->write_file('token.blank', "\n");
check_fail('dato_api_token_file with only a newline', qr/empty/,
           loc => "dato_publish; dato_api_url $API;"
                  . " dato_api_token_file %%TMP%%/token.blank;");

check_fail('token then token_file at one level',
           qr/"dato_api_token_file" directive is a conflict with "dato_api_token"/,
           loc => "dato_publish; dato_api_url $API; dato_api_token a;"
                  . " dato_api_token_file %%TMP%%/token.good;");

check_fail('token_file then token at one level',
           qr/"dato_api_token" directive is a conflict with "dato_api_token_file"/,
           loc => "dato_publish; dato_api_url $API;"
                  . " dato_api_token_file %%TMP%%/token.good; dato_api_token a;");

check_ok('token at http{}, token_file in location (override)',
         http => 'dato_api_token http-level-token;',
         loc => "dato_publish; dato_api_url $API;"
                . " dato_api_token_file %%TMP%%/token.good;");

# ----------------------------------------------------------- batch size --

check_fail('dato_batch_size 0', qr/between 1 and 200/,
           loc => "dato_publish; $base dato_batch_size 0;");
check_fail('dato_batch_size 201', qr/between 1 and 200/,
           loc => "dato_publish; $base dato_batch_size 201;");
check_ok('dato_batch_size 1', loc => "dato_publish; $base dato_batch_size 1;");
check_ok('dato_batch_size 200', loc => "dato_publish; $base dato_batch_size 200;");

# --------------------------------------------------------------- events --

check_fail('dato_publish_events publish', qr/loop/,
           loc => "dato_publish; $base dato_publish_events publish;");
check_fail('dato_publish_events update publish', qr/loop/,
           loc => "dato_publish; $base dato_publish_events update publish;");
check_fail('dato_publish_events publish at http{}', qr/loop/,
           http => 'dato_publish_events publish;',
           loc => "dato_publish; $base");
check_fail('dato_publish_events unknown', qr/bogus/,
           loc => "dato_publish; $base dato_publish_events create bogus;");
check_ok('dato_publish_events create update unpublish',
         loc => "dato_publish; $base dato_publish_events create update unpublish;");

# ------------------------------------------------------------ the rest --

check_fail('dato_publish_wait bogus', qr/dato_publish_wait|bogus/,
           loc => "dato_publish; $base dato_publish_wait bogus;");
check_ok('dato_publish_wait none', loc => "dato_publish; $base dato_publish_wait none;");
check_ok('dato_publish_wait job', loc => "dato_publish; $base dato_publish_wait job;");

check_fail('dato_api_url ftp://x', qr/ftp:\/\/x/,
           loc => 'dato_publish; dato_api_url ftp://x; dato_api_token a;');
check_fail('dato_api_url ftp://x at http{}', qr/ftp:\/\/x/,
           http => 'dato_api_url ftp://x;',
           loc => 'dato_publish; dato_api_token a;');

check_fail('dato_environment Bad_Env', qr/Bad_Env/,
           loc => "dato_publish; $base dato_environment Bad_Env;");
check_ok('dato_environment sandbox-1',
         loc => "dato_publish; $base dato_environment sandbox-1;");

check_fail('dato_publish in server{}', qr/"dato_publish" directive is not allowed here/,
           srv => 'dato_publish;', loc => $base);

check_fail('dato_publish twice', qr/"dato_publish" directive is duplicate/,
           loc => "dato_publish; dato_publish; $base");

check_ok('all directives together',
         http => "dato_api_url $API; dato_api_timeout 5s;",
         srv => 'dato_api_token srv-level-token; dato_batch_size 50;',
         loc => 'dato_publish; dato_batch_window 100ms; dato_environment sandbox-2;'
                . ' dato_publish_events update; dato_publish_wait none;'
                . ' dato_publish_timeout 3s;');

# ------------------------------- a token file's token reaches the API --

$t->start_mock('--token', 'from-the-file-7f3a');
$t->write_file('token.run', "from-the-file-7f3a\n");

$t->run(http => <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        location /hook {
            dato_publish;
            dato_api_url %%MOCK%%;
            dato_api_token_file %%TMP%%/token.run;
            dato_batch_window 100ms;
        }
    }
EOF

my $id = DatoTest::uuid_id(1001);
my $r = $t->post_json('/hook', DatoTest::hook($id));
is($r->{status}, 202, 'token file: webhook accepted') or diag $r->{raw};
is(ref $r->{json} eq 'HASH' && $r->{json}{meta}{status}, 'accepted',
   'token file: meta.status accepted');

my @req = $t->publishes;
is(scalar @req, 1, 'token file: one bulk publish call');
is($req[0]{headers}{authorization}, 'Bearer from-the-file-7f3a',
   'token file: Authorization carries the token from the file, without newline');
is($req[0]{status}, 202, 'token file: the mock accepted the call');
is_deeply($req[0]{ids}, [$id], 'token file: the record was sent');

$t->log_unlike(qr/from-the-file-7f3a/, 'the token is not in error.log');

$t->done;
done_testing;
