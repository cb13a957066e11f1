-- A few rows to try the example with: case 1 (with child case 2) is old and closed, case 3 is
-- old but its message has an attachment, case 4 is recent.
INSERT INTO accounts (id, name, region) VALUES (1, 'Acme Ltd', 'EU'), (2, '华星科技', 'CN');

INSERT INTO cases (id, account_id, parent_case_id, queue, assignee, title, description, state,
                   amount, opened_at, last_activity_at, tags, custom, raw_payload)
VALUES
  (1, 1, NULL, 'billing', 'li.wei', 'Refund for INV-2023-004512', 'Customer asks for a refund.',
   'closed', 120.50, '2023-01-05 09:00+00', '2023-02-01 10:00+00', '{refund,vip}',
   '{"channel": "email"}', '{"source":  "web"}'),
  (2, 1, 1, 'billing', 'li.wei', 'Refund follow-up', '客户要求退款', 'closed', NULL,
   '2023-01-20 09:00+00', '2023-02-02 10:00+00', NULL, NULL, NULL),
  (3, 2, NULL, 'support', 'ops', 'Broken login', 'Cannot log in since Monday.', 'closed', NULL,
   '2023-03-01 08:00+00', '2023-03-02 08:00+00', NULL, NULL, NULL),
  (4, 2, NULL, 'support', 'ops', 'New laptop', 'Please ship a new laptop.', 'open', NULL,
   now(), now(), NULL, NULL, NULL);

INSERT INTO case_messages (msg_id, case_id, queue, subject, text, sent_at, ratings)
VALUES
  ('6f1c2f8e-6d2a-4b8e-9a57-2d1f9e3c0a01', 1, 'billing', 'Refund', 'Please refund my order.',
   '2023-01-05 09:01+00', '{5,4}'),
  ('6f1c2f8e-6d2a-4b8e-9a57-2d1f9e3c0a02', 3, 'support', 'Login', 'Screenshot attached.',
   '2023-03-01 08:05+00', NULL);

INSERT INTO notes (id, case_id, author, body, written_at, minutes)
VALUES (1, 1, 'li.wei', 'Refund approved by finance.', '2023-02-01 10:00', 15);

INSERT INTO attachments (id, message_id, file_name, content)
VALUES (1, '6f1c2f8e-6d2a-4b8e-9a57-2d1f9e3c0a02', 'screenshot.png', '\x89504e47');
