// SigV4 for nginx proxying a private S3 bucket (the peer of the GitDeploy edge in the bench's
// proxy scenarios), the way nginx's own S3 gateway signs: an njs function computes the
// Authorization header of each upstream GET. Credentials and region come from nginx variables
// set in the generated configuration.
//
// Signed: host, x-amz-content-sha256 (the empty body's hash) and x-amz-date, as the edge does.

const crypto = require('crypto');

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

function hmac(key, data) {
    return crypto.createHmac('sha256', key).update(data).digest();
}

function sha256hex(data) {
    return crypto.createHash('sha256').update(data).digest('hex');
}

// RFC 3986 encoding of each path segment, as S3 canonicalises it.
function encodePath(path) {
    return path.split('/').map(function (seg) {
        return encodeURIComponent(seg).replace(/[!'()*]/g, function (c) {
            return '%' + c.charCodeAt(0).toString(16).toUpperCase();
        });
    }).join('/');
}

// The value of x-amz-date for this request, fixed the first time it is asked for so the header
// and the signature agree.
function amzDate(r) {
    if (!r.variables.s3_amz_date) {
        r.variables.s3_amz_date = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
    }
    return r.variables.s3_amz_date;
}

function authorization(r) {
    const v = r.variables;
    const date = amzDate(r);
    const day = date.slice(0, 8);
    const scope = day + '/' + v.s3_region + '/s3/aws4_request';
    const canonical = [
        r.method,
        encodePath(r.uri),
        '',
        'host:' + v.s3_host,
        'x-amz-content-sha256:' + EMPTY_SHA256,
        'x-amz-date:' + date,
        '',
        'host;x-amz-content-sha256;x-amz-date',
        EMPTY_SHA256,
    ].join('\n');
    const toSign = ['AWS4-HMAC-SHA256', date, scope, sha256hex(canonical)].join('\n');
    let key = hmac('AWS4' + v.s3_secret_key, day);
    key = hmac(key, v.s3_region);
    key = hmac(key, 's3');
    key = hmac(key, 'aws4_request');
    const signature = crypto.createHmac('sha256', key).update(toSign).digest('hex');
    return 'AWS4-HMAC-SHA256 Credential=' + v.s3_access_key + '/' + scope +
        ', SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=' + signature;
}

export default { authorization, amzDate, EMPTY_SHA256 };
