package Dato::Payload;

# What the tests send and read: DatoCMS record IDs, webhooks, the bodies a
# dato_publish location takes, JSON.  Functions (DatoTest re-exports them).
#
#   uuid_id($n)            a deterministic record ID (RFC 4122 v4 UUID in
#                          URL-safe base64, 22 characters) from an integer
#   ids_of($from, $n)      record ids uuid_id($from) .. uuid_id($from + $n - 1)
#   webhook_data(%a)       a DatoCMS webhook (data): id, event_type, status,
#                          entity_type, environment, is_environment_primary,
#                          entity, extra (top-level keys; undef deletes) ...
#   webhook(%a)            the same as JSON text
#   hook($id, %a)          a webhook (JSON text) for record $id; %a as for
#                          webhook_data()
#   ids_body(@ids)         the body {"ids":[...]} (JSON text)
#   bulk_body(@ids)        a bulk publish body {"data":{"type":
#                          "item_bulk_publish_operation",...}} (data)
#   json_headers(%more)    request headers { Content-Type: application/json,
#                          %more }, a new hash each time
#   post_req($path, $body, %a)  one JSON POST for parallel_requests()
#   jobs_of($r)            the job ids in the data[] of a webhook's answer
#   encode_json($data), decode_json($text)  canonical, UTF-8, any value

use strict;
use warnings;

use POSIX qw(strftime);
use JSON::PP ();
use MIME::Base64 ();
use Exporter 'import';

our @EXPORT_OK = qw(uuid_id ids_of webhook_data webhook hook ids_body
                    bulk_body json_headers post_req jobs_of
                    encode_json decode_json);

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

# each webhook a call of its own, as DatoCMS numbers them: the replay
# guard answers a webhook_call_id it has seen as it was answered before
my $CALL_ID = 0;
sub next_call_id { return sprintf '1%05d%06d', $$ % 100000, ++$CALL_ID }

# deterministic RFC 4122 v4 UUID in URL-safe base64 (22 chars) from an integer
sub uuid_id {
    my ($n) = @_;
    $n = int($n // 0);
    my $m = ($n * 2654435761 + 0x3c6ef372) & 0xffffffff;
    my $m2 = ($n * 40503 + 0x9e37) & 0xffff;
    my $bytes = pack('N n n N N',
        ($m & 0x7fffffff) | 0x10000000,      # top bit clear, like generateId
        ($n >> 32) & 0xffff,
        0x4000 | ($m2 & 0x0fff),             # version 4
        0x80000000 | (($m ^ 0x5bd1e995) & 0x3fffffff),   # variant 10
        $n & 0xffffffff);
    my $b = MIME::Base64::encode_base64($bytes, '');
    $b =~ tr{+/}{-_};
    $b =~ s/=+\z//;
    return $b;
}

sub webhook_data {
    my (%a) = @_;
    my $status = $a{status} // 'draft';
    my $ts = $a{event_triggered_at}
        // strftime('%Y-%m-%dT%H:%M:%S.000Z', gmtime);
    my $published = $status eq 'draft' ? undef : $ts;

    my $entity = $a{entity} // {
        (exists $a{id} && !defined $a{id} ? () : (id => $a{id} // uuid_id(1))),
        type => $a{entity_kind} // 'item',
        attributes => $a{attributes} // {
            title => 'Hello from the test suite',
            slug  => 'hello-from-the-test-suite',
        },
        relationships => {
            item_type => { data => { type => 'item_type', id => $a{item_type} // '2079393' } },
            creator   => { data => { type => 'account', id => '87234' } },
        },
        meta => {
            created_at => '2024-05-14T09:12:03.551+00:00',
            updated_at => $ts,
            published_at => $published,
            publication_scheduled_at => undef,
            unpublishing_scheduled_at => undef,
            first_published_at => $published,
            is_valid => JSON::PP::true,
            is_current_version_valid => JSON::PP::true,
            is_published_version_valid => JSON::PP::true,
            status => $status,
            current_version => 'KnN0WoQJTQWYbm4Ro3T8Hg',
            stage => undef,
        },
    };

    my $primary = exists $a{is_environment_primary}
        ? ($a{is_environment_primary} ? JSON::PP::true : JSON::PP::false)
        : JSON::PP::true;

    my %d = (
        site_id => $a{site_id} // '124833',
        webhook_id => $a{webhook_id} // '31274',
        environment => $a{environment} // 'main',
        is_environment_primary => $primary,
        entity_type => $a{entity_type} // 'item',
        event_type => $a{event_type} // 'update',
        entity => $entity,
        related_entities => $a{related_entities} // [],
        webhook_call_id => $a{webhook_call_id} // next_call_id(),
        event_triggered_at => $ts,
        attempted_auto_retries_count => $a{attempted_auto_retries_count} // 0,
    );
    $d{previous_entity} = $a{previous_entity} if exists $a{previous_entity};

    # extra => { key => value } adds/overrides top-level keys; undef deletes
    while (my ($k, $v) = each %{ $a{extra} // {} }) {
        if (defined $v) { $d{$k} = $v } else { delete $d{$k} }
    }
    return \%d;
}

sub webhook { $JSON->encode(webhook_data(@_)) }

sub encode_json { $JSON->encode($_[-1]) }
sub decode_json { $JSON->decode($_[-1]) }

# the record ids uuid_id($from) .. uuid_id($from + $n - 1)
sub ids_of {
    my ($from, $n) = @_;
    return map { uuid_id($_) } $from .. $from + $n - 1;
}

# a webhook (JSON text) for record $id; %a as for webhook_data()
sub hook { my ($id, %a) = @_; return webhook(id => $id, %a) }

# the body {"ids":[...]} (JSON text)
sub ids_body { return $JSON->encode({ ids => [@_] }) }

# a bulk publish body (data, as DatoCMS's own bulk publish call has it)
sub bulk_body {
    my (@ids) = @_;
    return { data => { type => 'item_bulk_publish_operation',
                       relationships => { items => { data => [
                           map { { type => 'item', id => $_ } } @ids ] } } } };
}

# request headers with Content-Type: application/json (a new hash each time)
sub json_headers { return { 'Content-Type' => 'application/json', @_ } }

# one POST of JSON for parallel_requests(); data in $body is encoded
sub post_req {
    my ($path, $body, %a) = @_;
    $body = $JSON->encode($body) if ref $body;
    return { method => 'POST', path => $path, headers => json_headers(),
             body => $body, %a };
}

# the job ids in the data[] of a webhook's answer (json_request() result)
sub jobs_of {
    my ($r) = @_;
    return map { $_->{id} } grep { ($_->{type} // '') eq 'job' }
           @{ (($r->{json} || {})->{data}) || [] };
}

1;
