#!/usr/bin/perl

# "nginx -t" (issue 13): every mistake in the module's directives fails,
# or passes with a warning, with a message that names its directive as
# nginx's own messages do, at that directive's line.  One line of the
# table below per case: the exact message and the line it points at.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use DatoTest;

my $t = DatoTest->new(workers => 1);

$t->write_file('token', "file-token-abc\n");
$t->write_file('token.spaces', "file token\n");
$t->write_file('token.blank', "\n \n");
$t->write_file('short.key', "whsec_c2hvcnQ=\n");
$t->write_file('good.key', "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");

# Columns, separated by " | ":
#
#   result   emerg (nginx -t fails), warn (passes with that [warn]), ok
#            (passes without any message)
#   where    http, srv or loc: the case's line goes into http{}, the
#            server{} or the location with dato_publish
#   line     the case's directives, on one line of nginx.conf
#   at       the line the message points at: "here" (the case's line),
#            or "publish" (the location's dato_publish line, for what
#            only the merge of all levels can check)
#   message  exactly what nginx prints between "[emerg] " or "[warn] "
#            and " in FILE:LINE"
#
# The configuration around the line has dato_api_url (an IP literal: no
# DNS), dato_api_token at http{} level and dato_publish in the location,
# each unless the case's line names that directive itself.

my $cases = <<'EOF';
emerg | loc  | dato_publish_status;                            | here    | "dato_publish_status" directive is a conflict with "dato_publish"
emerg | loc  | dato_publish_status; dato_publish;              | here    | "dato_publish" directive is a conflict with "dato_publish_status"
emerg | loc  | dato_publish; dato_publish;                     | here    | "dato_publish" directive is duplicate
emerg | loc  | dato_api_url http://127.0.0.1:8080/?page=1;     | here    | invalid value "http://127.0.0.1:8080/?page=1" in "dato_api_url" directive, a query string is not allowed
emerg | srv  | dato_api_url http://127.0.0.1:8080/api#top;     | here    | invalid value "http://127.0.0.1:8080/api#top" in "dato_api_url" directive, a fragment is not allowed
emerg | http | dato_api_url https://user:pass@127.0.0.1;      | here    | invalid value in "dato_api_url" directive, user info ("user@") is not allowed: the token goes in "dato_api_token"
emerg | loc  | dato_api_url ftp://127.0.0.1;                   | here    | invalid value "ftp://127.0.0.1" in "dato_api_url" directive, it must start with "http://" or "https://"
emerg | loc  | dato_api_url http://127.0.0.1:99999;            | here    | invalid value "http://127.0.0.1:99999" in "dato_api_url" directive, invalid port
emerg | loc  | dato_api_url http:///items;                     | here    | invalid value "http:///items" in "dato_api_url" directive, no host
emerg | loc  | dato_api_url "http://127.0.0.1/a b";            | here    | invalid value "http://127.0.0.1/a b" in "dato_api_url" directive, spaces and control characters are not allowed
emerg | loc  | dato_webhook_secret "X Secret" s3cr3t;          | here    | invalid header name "X Secret" in "dato_webhook_secret" directive
emerg | srv  | dato_webhook_secret X-Secret: s3cr3t;           | here    | invalid header name "X-Secret:" in "dato_webhook_secret" directive
emerg | loc  | dato_webhook_secret X-Secret " s3cr3t";         | here    | invalid value in "dato_webhook_secret" directive, a header value cannot start or end with a space, or hold a line break
warn  | http | dato_webhook_secret X_Secret s3cr3t;            | here    | header name "X_Secret" in "dato_webhook_secret" directive has "_", and nginx ignores such request headers without "underscores_in_headers on": every webhook would be refused
warn  | loc  | dato_webhook_secret X.Secret s3cr3t;            | here    | header name "X.Secret" in "dato_webhook_secret" directive has ".", and nginx ignores such request headers without "ignore_invalid_headers off": every webhook would be refused
ok    | srv  | underscores_in_headers on; dato_webhook_secret X_Secret s3cr3t; | here | -
emerg | loc  | dato_api_token "a b";                           | here    | invalid token in "dato_api_token" directive, it has spaces or control characters
emerg | loc  | dato_api_token "";                              | here    | empty token in "dato_api_token" directive
emerg | loc  | dato_api_token abc; dato_api_token_file %%TMP%%/token; | here | "dato_api_token_file" directive is a conflict with "dato_api_token" at this level
emerg | srv  | dato_api_token_file %%TMP%%/token; dato_api_token abc; | here | "dato_api_token" directive is a conflict with "dato_api_token_file" at this level
emerg | loc  | dato_api_token abc; dato_api_token def;         | here    | "dato_api_token" directive is duplicate
emerg | loc  | dato_api_token_file %%TMP%%/token.spaces;       | here    | invalid token in "dato_api_token_file" directive, "%%TMP%%/token.spaces" holds spaces or control characters
emerg | loc  | dato_api_token_file %%TMP%%/token.blank;        | here    | empty token in "dato_api_token_file" directive, "%%TMP%%/token.blank" is empty
emerg | loc  | # no dato_api_token anywhere                    | publish | "dato_publish" needs "dato_api_token" or "dato_api_token_file"
emerg | http | dato_queue_size 0;                              | here    | invalid value "0" in "dato_queue_size" directive, it must be at least 1
emerg | http | dato_zone_size 16k;                             | here    | invalid value "16k" in "dato_zone_size" directive, it must be at least 32k
emerg | loc  | dato_api_timeout 0;                             | here    | invalid value "0" in "dato_api_timeout" directive, it must be more than 0: a call would have no time limit
emerg | srv  | dato_retry_timeout 0;                           | here    | invalid value "0" in "dato_retry_timeout" directive, it must be more than 0: every record would be given up before its first call
emerg | loc  | dato_job_timeout 0s;                            | here    | invalid value "0s" in "dato_job_timeout" directive, it must be more than 0: to follow no job, use "dato_job_poll off"
emerg | loc  | dato_rate_limit 0;                              | here    | invalid number of calls "0" in "dato_rate_limit" directive, expected 1 to 600
emerg | loc  | dato_rate_limit 601 60s;                        | here    | invalid number of calls "601" in "dato_rate_limit" directive, expected 1 to 600
emerg | http | dato_rate_limit 10 0s;                          | here    | invalid period "0s" in "dato_rate_limit" directive
warn  | loc  | dato_rate_limit 100;                            | here    | 100 calls per 3s in "dato_rate_limit" directive are more than DatoCMS allows (60 per 3s): it is only a cap, the module also follows the API's X-RateLimit-Limit
warn  | http | dato_rate_limit 21 1s;                          | here    | 21 calls per 1s in "dato_rate_limit" directive are more than DatoCMS allows (60 per 3s): it is only a cap, the module also follows the API's X-RateLimit-Limit
ok    | loc  | dato_rate_limit 60;                             | here    | -
ok    | loc  | dato_rate_limit 20 1s;                          | here    | -
emerg | loc  | dato_publish_events create publish;             | here    | invalid value "publish" in "dato_publish_events" directive, it would publish in a loop: each publish sends a "publish" webhook
emerg | loc  | dato_publish_events delete;                     | here    | invalid value "delete" in "dato_publish_events" directive, a deleted record cannot be published
emerg | http | dato_publish_events save;                       | here    | invalid value "save" in "dato_publish_events" directive, expected "create", "update", "publish" or "unpublish"
emerg | http | dato_publish_events publish;                    | here    | invalid value "publish" in "dato_publish_events" directive, it would publish in a loop: each publish sends a "publish" webhook
emerg | loc  | dato_unpublish; dato_publish_events unpublish;  | here    | invalid value "unpublish" in "dato_publish_events" directive, it would unpublish in a loop: each unpublish sends an "unpublish" webhook
emerg | loc  | dato_move_to_stage review; dato_publish_events update; | here | invalid value "update" in "dato_publish_events" directive, it would move records in a loop: each move to a stage sends an "update" webhook
ok    | loc  | dato_unpublish; dato_publish_events publish create; | here | -
ok    | loc  | dato_move_to_stage in_review-2;                 | here    | -
emerg | loc  | dato_move_to_stage "in review";                 | here    | invalid value "in review" in "dato_move_to_stage" directive, a stage is 1 to 64 letters, digits, "_" and "-"
emerg | loc  | dato_publish; dato_unpublish;                   | here    | "dato_unpublish" directive is a conflict with "dato_publish"
emerg | loc  | dato_unpublish; dato_publish_status;            | here    | "dato_publish_status" directive is a conflict with "dato_unpublish"
emerg | loc  | dato_webhook_signing_secret s3cr3t;             | here    | invalid value in "dato_webhook_signing_secret" directive, the secret does not start with "whsec_"
emerg | srv  | dato_webhook_signing_secret whsec_c2hvcnQ=;     | here    | invalid value in "dato_webhook_signing_secret" directive, the secret must decode to 24 to 64 bytes
ok    | http | dato_webhook_signing_secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw; dato_webhook_signing_secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw; | here | -
emerg | loc  | dato_webhook_secret_file X-Secret %%TMP%%/missing.key; | here | open() "%%TMP%%/missing.key" failed (2: No such file or directory)
emerg | loc  | dato_unpublish; dato_publish_events delete;     | here    | invalid value "delete" in "dato_publish_events" directive, a deleted record cannot be unpublished
emerg | loc  | dato_move_to_stage review; dato_publish_events create delete; | here | invalid value "delete" in "dato_publish_events" directive, a deleted record cannot be moved to a stage
emerg | loc  | dato_move_to_stage review; dato_publish;        | here    | "dato_publish" directive is a conflict with "dato_move_to_stage"
emerg | loc  | dato_unpublish; dato_unpublish;                 | here    | "dato_unpublish" directive is duplicate
emerg | loc  | dato_webhook_signing_secret whsec_!!!!;         | here    | invalid value in "dato_webhook_signing_secret" directive, the secret is not base64 after "whsec_"
emerg | loc  | dato_webhook_signing_secret_file %%TMP%%/short.key; | here | invalid value in "dato_webhook_signing_secret_file" directive, the secret in "%%TMP%%/short.key" must decode to 24 to 64 bytes
emerg | loc  | dato_webhook_signing_secret_file %%TMP%%/missing.key; | here | open() "%%TMP%%/missing.key" failed (2: No such file or directory)
ok    | loc  | dato_webhook_signing_secret_file %%TMP%%/good.key; dato_webhook_secret_file X-Secret %%TMP%%/token; | here | -
emerg | loc  | dato_environment Staging;                       | here    | invalid value "Staging" in "dato_environment" directive, an environment is 1 to 63 lowercase letters, digits and dashes
emerg | loc  | dato_api_ca_file %%TMP%%/missing.pem;           | here    | invalid value "%%TMP%%/missing.pem" in "dato_api_ca_file" directive, stat() failed (2: No such file or directory)
emerg | srv  | dato_api_ca_file %%TMP%%;                       | here    | invalid value "%%TMP%%" in "dato_api_ca_file" directive, it is not a file
emerg | loc  | dato_batch_size 0;                              | here    | invalid value "0" in "dato_batch_size" directive, it must be between 1 and 200
emerg | http | dato_batch_size 201;                            | here    | invalid value "201" in "dato_batch_size" directive, it must be between 1 and 200
emerg | loc  | dato_publish_wait forever;                      | here    | invalid value "forever" in "dato_publish_wait" directive, expected "none", "job" or "result"
emerg | http | dato_publish_wait result; dato_job_poll off;    | publish | "dato_publish_wait result" needs "dato_job_poll on"
warn  | loc  | dato_publish_timeout 9s;                        | here    | value "9s" in "dato_publish_timeout" directive is longer than DatoCMS waits for a webhook call (8s): it drops the call and counts it as failed
ok    | loc  | dato_publish_timeout 8s;                        | here    | -
ok    | loc  | dato_publish_timeout 0;                         | here    | -
ok    | loc  | dato_batch_window 0;                            | here    | -
ok    | loc  | dato_max_records 0;                             | here    | -
EOF

my $tmp = $t->tmpdir;
my $n = 0;

for my $row (split /\n/, $cases) {
    my ($result, $where, $line, $at, $message) = split /\s+\|\s+/, $row, 5;
    $n++;

    my %case = (http => '', srv => '', loc => '');
    $case{$where} = "$line  # case $n";

    my $url = $line =~ /\bdato_api_url\b/ ? ''
                                           : 'dato_api_url http://127.0.0.1:%%PORT2%%;';
    my $token = $line =~ /\bdato_api_token/ ? '' : 'dato_api_token test-token;';
    my $publish = $line =~ /\bdato_(?:publish|unpublish|move_to_stage)\b/
                ? '' : 'dato_publish;  # publish';

    my ($rc, $out) = $t->test_conf(http => <<"EOF");
    $url
    $token
    $case{http}
    server {
        listen 127.0.0.1:%%PORT%%;
        $case{srv}
        location /hook {
            $publish
            $case{loc}
        }
    }
EOF

    # where the case's line and dato_publish's line are in the file
    my $file = "$tmp/nginx-test.conf";
    my @conf = split /\n/, $t->read_file('nginx-test.conf');
    my ($here) = grep { $conf[$_ - 1] =~ /# case $n$/ } 1 .. @conf;
    my ($pub) = grep { $conf[$_ - 1] =~ /# publish$/ } 1 .. @conf;
    my $lineno = $at eq 'publish' ? $pub : $here;

    (my $name = $line) =~ s/\s+$//;
    $name = "$where: $name";
    $message =~ s/%%TMP%%/$tmp/g;
    $message =~ s/\s+$//;

    my @said = grep { /\[(?:emerg|warn|alert|crit|error)\]/ } split /\n/, $out;

    if ($result eq 'ok') {
        ok($rc == 0 && !@said, "$name: passes, no message") or diag $out;
        next;
    }

    my $want = "nginx: [$result] $message in $file:$lineno";

    ok($result eq 'emerg' ? $rc != 0 : $rc == 0,
       "$name: nginx -t " . ($result eq 'emerg' ? 'fails' : 'passes'))
        or diag $out;
    is_deeply(\@said, [$want], "$name: $result at line $lineno")
        or diag $out;
}

# the token is never in a message, whatever is wrong with it
my ($rc, $out) = $t->test_conf(http => <<'EOF');
    dato_api_url http://127.0.0.1:%%PORT2%%;
    dato_api_token "s3cret-token-1f9a with-a-space";
    server {
        listen 127.0.0.1:%%PORT%%;
        location /hook { dato_publish; }
    }
EOF
unlike($out, qr/s3cret-token-1f9a/, 'the invalid token is not in the message');

($rc, $out) = $t->test_conf(http => <<'EOF');
    dato_api_url http://dato-user:pass-7c2e@127.0.0.1:%%PORT2%%;
    dato_api_token test-token;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /hook { dato_publish; }
    }
EOF
unlike($out, qr/pass-7c2e/, 'user info of dato_api_url is not in the message');

# nor a signing secret, whatever is wrong with it
($rc, $out) = $t->test_conf(http => <<'EOF');
    dato_api_url http://127.0.0.1:%%PORT2%%;
    dato_api_token test-token;
    dato_webhook_signing_secret whsec_c2VjcmV0LXNpZ25pbmc=;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /hook { dato_publish; }
    }
EOF
isnt($rc, 0, 'a short signing secret fails nginx -t');
unlike($out, qr/c2VjcmV0LXNpZ25pbmc/, 'the signing secret is not in the message');

$t->done;
done_testing;
