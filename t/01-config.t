#!/usr/bin/perl

# Configuration checks of ngx_http_dato_module: "nginx -t" accepts what the
# spec allows and refuses the rest with a message naming the problem; and a
# token read from dato_api_token_file is what the API receives.

###########################################################################

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use DatoTest qw(hook uuid_id);

###########################################################################

my $t = DatoTest->new(workers => 1);
$t->start_mock('--token', 'from-the-file-7f3a');

$t->write_file('token.run', "from-the-file-7f3a\n");
$t->write_file('token.good', "file-token-abc\n");
$t->write_file('token.empty', '');
$t->write_file('token.blank', "\n");

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

###########################################################################
# nginx -t: one case a row.  The server has one location, /hook; each row
# puts text into it (loc), at server{} level (srv) and at http{} level
# (http).  A row whose second column is undef passes; else nginx -t fails
# with an [emerg] that matches it.

# the API address is never contacted by "nginx -t"; an IP literal needs no
# resolver (the default host is not resolvable without a network)
my $API  = 'http://127.0.0.1:%%PORT2%%';
my $base = "dato_api_url $API; dato_api_token cfg-token;";
my $file = "dato_publish; dato_api_url $API; dato_api_token_file %%TMP%%";

my @cases = (

    # tokens
    ['minimal', undef, loc => "dato_publish; $base"],
    ['dato_publish without a token', qr/dato_api_token/,
        loc => "dato_publish; dato_api_url $API;"],
    ['token inherited from http{}', undef,
        http => "dato_api_token http-level-token; dato_api_url $API;",
        loc => 'dato_publish;'],
    ['token inherited from server{}', undef,
        srv => "dato_api_token srv-level-token; dato_api_url $API;",
        loc => 'dato_publish;'],
    ['dato_api_token_file with token + newline', undef,
        loc => "$file/token.good;"],
    ['dato_api_token_file missing', qr/token\.missing/,
        loc => "$file/token.missing;"],
    ['dato_api_token_file empty', qr/empty/, loc => "$file/token.empty;"],
    ['dato_api_token_file with only a newline', qr/empty/,
        loc => "$file/token.blank;"],
    ['token then token_file at one level',
        qr/"dato_api_token_file" directive is a conflict with "dato_api_token"/,
        loc => "dato_publish; dato_api_url $API; dato_api_token a;"
               . " dato_api_token_file %%TMP%%/token.good;"],
    ['token_file then token at one level',
        qr/"dato_api_token" directive is a conflict with "dato_api_token_file"/,
        loc => "$file/token.good; dato_api_token a;"],
    ['token at http{}, token_file in location (override)', undef,
        http => 'dato_api_token http-level-token;',
        loc => "$file/token.good;"],

    # batch size
    ['dato_batch_size 0', qr/between 1 and 200/,
        loc => "dato_publish; $base dato_batch_size 0;"],
    ['dato_batch_size 201', qr/between 1 and 200/,
        loc => "dato_publish; $base dato_batch_size 201;"],
    ['dato_batch_size 1', undef, loc => "dato_publish; $base dato_batch_size 1;"],
    ['dato_batch_size 200', undef,
        loc => "dato_publish; $base dato_batch_size 200;"],

    # events
    ['dato_publish_events publish', qr/loop/,
        loc => "dato_publish; $base dato_publish_events publish;"],
    ['dato_publish_events update publish', qr/loop/,
        loc => "dato_publish; $base dato_publish_events update publish;"],
    ['dato_publish_events publish at http{}', qr/loop/,
        http => 'dato_publish_events publish;', loc => "dato_publish; $base"],
    ['dato_publish_events unknown', qr/bogus/,
        loc => "dato_publish; $base dato_publish_events create bogus;"],
    ['dato_publish_events create update unpublish', undef,
        loc => "dato_publish; $base"
               . ' dato_publish_events create update unpublish;'],

    # the rest
    ['dato_publish_wait bogus', qr/dato_publish_wait|bogus/,
        loc => "dato_publish; $base dato_publish_wait bogus;"],
    ['dato_publish_wait none', undef,
        loc => "dato_publish; $base dato_publish_wait none;"],
    ['dato_publish_wait job', undef,
        loc => "dato_publish; $base dato_publish_wait job;"],
    ['dato_api_url ftp://x', qr/ftp:\/\/x/,
        loc => 'dato_publish; dato_api_url ftp://x; dato_api_token a;'],
    ['dato_api_url ftp://x at http{}', qr/ftp:\/\/x/,
        http => 'dato_api_url ftp://x;', loc => 'dato_publish; dato_api_token a;'],
    ['dato_environment Bad_Env', qr/Bad_Env/,
        loc => "dato_publish; $base dato_environment Bad_Env;"],
    ['dato_environment sandbox-1', undef,
        loc => "dato_publish; $base dato_environment sandbox-1;"],
    ['dato_publish in server{}', qr/"dato_publish" directive is not allowed here/,
        srv => 'dato_publish;', loc => $base],
    ['dato_publish twice', qr/"dato_publish" directive is duplicate/,
        loc => "dato_publish; dato_publish; $base"],
    ['all directives together', undef,
        http => "dato_api_url $API; dato_api_timeout 5s;",
        srv => 'dato_api_token srv-level-token; dato_batch_size 50;',
        loc => 'dato_publish; dato_batch_window 100ms; dato_environment sandbox-2;'
               . ' dato_publish_events update; dato_publish_wait none;'
               . ' dato_publish_timeout 3s;'],
);

for my $c (@cases) {
    my ($name, $emerg, %a) = @$c;
    my ($rc, $out) = $t->test_conf(http => <<"EOF");
    @{[ $a{http} // '' ]}
    server {
        listen 127.0.0.1:%%PORT%%;
        @{[ $a{srv} // '' ]}
        location /hook {
            @{[ $a{loc} // '' ]}
        }
    }
EOF

    if (!defined $emerg) {
        is($rc, 0, "$name: nginx -t passes") or diag $out;
        like($out, qr/test is successful/, "$name: nginx -t says successful");
        next;
    }

    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\]/, "$name: an [emerg] message") or diag $out;
    like($out, $emerg, "$name: message matches $emerg") or diag $out;
}

###########################################################################
# a token file's token reaches the API

my $id = uuid_id(1001);
my $r = $t->post_json('/hook', hook($id));
my @req = $t->publishes;

is($r->{status}, 202, 'token file: webhook accepted') or diag $r->{raw};
is(ref $r->{json} eq 'HASH' && $r->{json}{meta}{status}, 'accepted',
   'token file: meta.status accepted');
is(scalar @req, 1, 'token file: one bulk publish call');
is($req[0]{headers}{authorization}, 'Bearer from-the-file-7f3a',
   'token file: Authorization carries the token from the file, without newline');
is($req[0]{status}, 202, 'token file: the mock accepted the call');
is_deeply($req[0]{ids}, [$id], 'token file: the record was sent');

$t->log_unlike(qr/from-the-file-7f3a/, 'the token is not in error.log');

$t->done;
done_testing;
